"""Argument validation: every bad setting fails at construction, naming the argument, the value and what is accepted."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
from torch import nn

import hf_gns
from hf_gns.schedule import GNSPolicy, LinearSchedule, StepSchedule, make_policy
from hf_gns.validation import check_choice, check_fraction, check_int, check_number, check_positive_int

GNS_KEYS = "k, min, max, warmup, min_batch, max_batch, warmup_tokens, min_steps"


def pattern(name: str, value: str) -> str:
    """A `match` pattern: ``name``, then later the offending ``value``."""
    return re.escape(name) + ".*" + re.escape(value)


# (spec, field named in the message, offending value as shown, what is accepted)
BAD_SPECS = [
    ("gns:k=nan", "GNSPolicy.k", "got nan", "a finite number > 0"),
    ("gns:k=inf", "GNSPolicy.k", "got inf", "a finite number > 0"),
    ("gns:k=-1", "GNSPolicy.k", "got -1.0", "a finite number > 0"),
    ("gns:min=64,max=16", "GNSPolicy.min_batch", "got 64", "<= max_batch (16)"),
    ("linear:16:120:0", "LinearSchedule.tokens", "got 0.0", "None or a finite number > 0"),
    ("linear:16:120:nan", "LinearSchedule.tokens", "got nan", "None or a finite number > 0"),
    ("linear:16:8", "LinearSchedule.end", "got 8", ">= start (16)"),
    ("linear:16", "linear policy", "got 'linear:16'", "linear:START:END[:TOKENS]"),
    ("gns:foo=1", "gns key", "got 'foo'", GNS_KEYS),
]


@pytest.mark.parametrize("spec, name, value, accepted", BAD_SPECS, ids=[case[0] for case in BAD_SPECS])
def test_bad_policy_string_is_refused_by_make_policy(spec, name, value, accepted):
    with pytest.raises(ValueError, match=pattern(name, value)) as info:
        make_policy(spec)
    message = str(info.value)
    assert f"batch_size_policy {spec!r}" in message
    assert accepted in message


@pytest.mark.parametrize("spec, name, value, accepted", BAD_SPECS, ids=[case[0] for case in BAD_SPECS])
def test_bad_policy_string_is_refused_by_both_constructors(spec, name, value, accepted):
    with pytest.raises(ValueError, match=pattern(name, value)):
        hf_gns.GNSCallback(batch_size_policy=spec)
    with pytest.raises(ValueError, match=pattern(name, value)):
        hf_gns.GNSLoop(None, None, batch_size_policy=spec)  # refused before the accelerator or model is touched


# (keyword arguments, argument name, offending value as shown, what is accepted)
BAD_ARGS = [
    ({"lr_scaling": "bogus"}, "lr_scaling", "got 'bogus'", "one of 'none', 'sqrt', 'linear'"),
    ({"full_model_every": -1}, "full_model_every", "got -1", "use None to disable"),
    ({"full_model_every": 0}, "full_model_every", "got 0", "use None to disable"),
    ({"max_tokens": -5}, "max_tokens", "got -5", "None or a finite number > 0"),
]


@pytest.mark.parametrize("kwargs, name, value, accepted", BAD_ARGS, ids=[str(case[0]) for case in BAD_ARGS])
def test_bad_callback_argument_is_refused(kwargs, name, value, accepted):
    with pytest.raises(ValueError, match=pattern(name, value)) as info:
        hf_gns.GNSCallback(**kwargs)
    assert accepted in str(info.value)


@pytest.mark.parametrize("kwargs, name, value", [
    ({"ema": 1.0}, "ema", "got 1.0"),
    ({"ema": 0.0}, "ema", "got 0.0"),
    ({"ema": math.nan}, "ema", "got nan"),
    ({"max_tokens": math.inf}, "max_tokens", "got inf"),
    ({"max_tokens": 0}, "max_tokens", "got 0"),
    ({"full_model_every": 1.5}, "full_model_every", "got 1.5"),
    ({"full_model_every": True}, "full_model_every", "got True"),
    ({"prefix": None}, "prefix", "got None"),
    ({"history_file": 3}, "history_file", "got 3"),
    ({"log_layers": "yes"}, "log_layers", "got 'yes'"),
    ({"model_card": 1}, "model_card", "got 1"),
])
def test_other_bad_callback_arguments_are_refused(kwargs, name, value):
    with pytest.raises(ValueError, match=pattern(name, value)):
        hf_gns.GNSCallback(**kwargs)


@pytest.mark.parametrize("kwargs, name, value", [
    ({"lr_scaling": "bogus"}, "lr_scaling", "got 'bogus'"),
    ({"max_tokens": -5}, "max_tokens", "got -5"),
    ({"max_tokens": math.nan}, "max_tokens", "got nan"),
    ({"ema": 1.5}, "ema", "got 1.5"),
    ({"accumulation_steps": 0}, "accumulation_steps", "got 0"),
    ({"prefix": 7}, "prefix", "got 7"),
])
def test_bad_loop_argument_is_refused(kwargs, name, value):
    with pytest.raises(ValueError, match=pattern(name, value)):
        hf_gns.GNSLoop(None, None, **kwargs)


@pytest.mark.parametrize("make, name, value", [
    (lambda: GNSPolicy(k=0.0), "GNSPolicy.k", "got 0.0"),
    (lambda: GNSPolicy(min_batch=0), "GNSPolicy.min_batch", "got 0"),
    (lambda: GNSPolicy(max_batch=16.5), "GNSPolicy.max_batch", "got 16.5"),
    (lambda: GNSPolicy(warmup_tokens=-1.0), "GNSPolicy.warmup_tokens", "got -1.0"),
    (lambda: GNSPolicy(min_steps=-1), "GNSPolicy.min_steps", "got -1"),
    (lambda: LinearSchedule(0, 8), "LinearSchedule.start", "got 0"),
    (lambda: LinearSchedule(4, 8, math.inf), "LinearSchedule.tokens", "got inf"),
    (lambda: StepSchedule(()), "StepSchedule.points", "got ()"),
    (lambda: StepSchedule(((0.0, 16), (100.0, 8))), "StepSchedule.points", "never decreases"),
    (lambda: StepSchedule(((-1.0, 16),)), "StepSchedule.points[0] tokens", "got -1.0"),
    (lambda: StepSchedule(((math.nan, 16),)), "StepSchedule.points[0] tokens", "got nan"),
    (lambda: StepSchedule(((0.0, 16), (5.0, 0))), "StepSchedule.points[1] batch", "got 0"),
    (lambda: StepSchedule(((0.0, 16, 3),)), "StepSchedule.points[0]", "(tokens, batch) pair"),
])
def test_policy_dataclasses_validate_themselves(make, name, value):
    with pytest.raises(ValueError, match=pattern(name, value)):
        make()


@pytest.mark.parametrize("spec, expected", [
    ("adaptive", "unknown batch-size policy 'adaptive'"),
    ("", "unknown batch-size policy ''"),
    ("gns:k", "gns option must be KEY=VALUE"),
    ("gns:min=16.5", "min must be an integer, got '16.5'"),
    ("gns:min_steps=x", "min_steps must be an integer, got 'x'"),
    ("gns:min=16,min_batch=32", "gns key must be given once"),
    ("linear:a:8", "START must be an integer, got 'a'"),
    ("steps:0:16,1e8", "steps point must be TOKENS:BATCH"),
    ("steps:0:x", "BATCH must be an integer, got 'x'"),
])
def test_parser_errors_say_what_is_wrong(spec, expected):
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        make_policy(spec)
    if expected.startswith("unknown"):
        assert all(name in str(info.value) for name in ("'gns'", "'linear'", "'steps'"))


@pytest.mark.parametrize("spec, expected", [
    ("gns", GNSPolicy()),
    ("gns:k=2,min=16,max=512,warmup=1e6,min_steps=5", GNSPolicy(2.0, 16, 512, 1e6, 5)),
    ("gns:k=2,min_batch=16,max_batch=512,warmup_tokens=1e6,min_steps=5", GNSPolicy(2.0, 16, 512, 1e6, 5)),
    ("gns:min_batch=16,max=16", GNSPolicy(min_batch=16, max_batch=16)),
    ("gns: k = 0.5 , max = 1e3", GNSPolicy(k=0.5, max_batch=1000)),
    ("gns:min_steps=0,warmup=0", GNSPolicy(min_steps=0)),
    ("linear:16:120", LinearSchedule(16, 120)),
    ("linear:16:16", LinearSchedule(16, 16)),
    ("linear:16:120:5e8", LinearSchedule(16, 120, 5e8)),
    ("steps:0:16,1e8:16,2e8:64", StepSchedule(((0.0, 16), (1e8, 16), (2e8, 64)))),
    ("steps:2e8:64,0:16", StepSchedule(((2e8, 64), (0.0, 16)))),
])
def test_valid_forms_still_parse(spec, expected):
    policy = make_policy(spec)
    assert policy == expected
    for name in ("min_batch", "max_batch", "min_steps", "start", "end"):
        value = getattr(policy, name, None)
        assert value is None or type(value) is int, (name, value)


def test_valid_constructor_arguments_are_kept():
    gns = hf_gns.GNSCallback(ema=0.5, batch_size_policy="linear:2:8", max_tokens=1e6, lr_scaling="sqrt",
                             full_model_every=1, prefix="x/", history_file=None, model_card=False)
    assert (gns.ema, gns.full_model_every, gns.prefix, gns.history_file) == (0.5, 1, "x/", None)
    assert gns.control.policy == LinearSchedule(2, 8) and gns.control.lr_scaling == "sqrt"
    assert hf_gns.GNSCallback(full_model_every=None, batch_size_policy=None).control is None
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    loop = hf_gns.GNSLoop(SimpleNamespace(), model, batch_size_policy="gns:min_batch=4", accumulation_steps=2,
                          max_tokens=100, lr_scaling="linear", ema=0.9)
    assert loop.policy == GNSPolicy(min_batch=4) and loop.accumulation == 2
    hf_gns.unpatch_model(model)


def test_check_helpers():
    check_choice("mode", "a", ("a", "b"))
    check_int("n", 0, 0)
    check_positive_int("n", None, optional=True)
    check_number("x", 0.0, strict=False)
    check_fraction("f", 0.5)
    with pytest.raises(ValueError, match=re.escape("mode must be one of 'a', 'b', got 'c'")):
        check_choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=re.escape("n must be an integer >= 1, got False")):
        check_positive_int("n", False)
    with pytest.raises(ValueError, match=re.escape("x must be a finite number >= 0, got -0.5")):
        check_number("x", -0.5, strict=False)
    with pytest.raises(ValueError, match=re.escape("f must be a number in the open interval (0, 1), got '0.5'")):
        check_fraction("f", "0.5")


def test_one_off_value_and_the_old_argument_name():
    """None is the one "off"; the string 'none' says so; batch_size= still works, with a FutureWarning."""
    with pytest.raises(ValueError, match="batch_size_policy='none': pass None"):
        hf_gns.GNSCallback(batch_size_policy="none")
    with pytest.warns(FutureWarning, match="now batch_size_policy"):
        gns = hf_gns.GNSCallback(batch_size="linear:2:8")
    assert gns.control.policy == LinearSchedule(2, 8)
    with pytest.raises(TypeError, match="batch_size_policy only"):
        hf_gns.GNSCallback(batch_size="gns", batch_size_policy="gns")
    with pytest.raises(TypeError, match=r"batch_size_policy must be a batch-size policy \(an object with a "
                                        r"target\(...\) method.*got int"):
        hf_gns.GNSCallback(batch_size_policy=64)


def test_public_names():
    """__all__ lists what users call; the policies are exported and the protocol accepts a user's own."""
    assert set(hf_gns.__all__) == {"attach", "GNSCallback", "GNSLoop", "patch_model", "unpatch_model",
                                   "set_recording", "describe", "gather_stats", "reset_stats", "BatchSizePolicy",
                                   "GNSPolicy", "LinearSchedule", "StepSchedule"}
    for name in hf_gns.__all__:
        assert getattr(hf_gns, name) is not None

    class Doubling:
        def target(self, tokens, b_simple, start_batch, budget, measured_steps=None):
            return 2 * start_batch

    assert isinstance(Doubling(), hf_gns.BatchSizePolicy)
    assert make_policy(Doubling()).target(0, float("nan"), 8, None) == 16
