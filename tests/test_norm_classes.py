"""Every normalization class of the installed transformers is patched or deliberately refused.

Each ``transformers.models.*.modeling_*`` module is imported (those missing an optional
dependency are counted and skipped). Every class defined there whose name contains "Norm"
(or that subclasses ``nn.LayerNorm`` / ``nn.RMSNorm``) is built with a small hidden size;
the leaf norms among them (`hf_gns.probe.is_norm_candidate`) get a plan from
`hf_gns.probe.plan_for`: a known formula, the generic path, or `Unsupported` with a reason.
``pytest -s`` prints the whole table. Every class that gets a plan is then patched inside a
tiny wrapper and its statistics are checked against a per-example brute-force oracle.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
import transformers.models
from torch import nn

import hf_gns
from hf_gns.probe import Unsupported, is_norm_candidate, plan_for

D = 32
#: constructor arguments that are the normalized size
SIZE_ARGS = frozenset({"hidden_size", "dim", "normalized_shape", "n", "size", "c_in", "feat_size", "num_features",
                       "num_channels", "embedding_dim", "in_channels", "out_channels", "cin", "cout"})
#: values for the other required constructor arguments met in transformers' norm classes
OTHER_ARGS = {"group_size": D // 2, "num_heads": 2, "head_dim": D // 2, "num_groups": 2, "num_embeddings": 32,
              "padding_idx": 0, "norm_eps": 1e-6, "groups": 1, "dropout_prob": 0.0, "layer_id": 0,
              "feature_dims": (D,), "kernel_size": 1, "stride": 1}
#: torch's own norms as models build them (an ``eps=None`` RMSNorm takes eps from the input dtype)
TORCH_NORMS = {
    "torch.nn.LayerNorm": lambda: nn.LayerNorm(D),
    "torch.nn.LayerNorm(bias=False)": lambda: nn.LayerNorm(D, bias=False),
    "torch.nn.RMSNorm(eps=1e-6)": lambda: nn.RMSNorm(D, eps=1e-6),
    "torch.nn.RMSNorm(eps=None)": lambda: nn.RMSNorm(D),
}
#: a few well-known classes and the formula they must be matched to
EXPECTED = {
    "torch.nn.LayerNorm": "layer_norm",
    "torch.nn.LayerNorm(bias=False)": "layer_norm_no_bias",
    "transformers.models.llama.modeling_llama.LlamaRMSNorm": "llama_rms",
    "transformers.models.olmo2.modeling_olmo2.Olmo2RMSNorm": "olmo2_rms",
    "transformers.models.gemma.modeling_gemma.GemmaRMSNorm": "gemma_rms",
    "transformers.models.t5.modeling_t5.T5LayerNorm": "t5_rms",
    "transformers.models.cohere.modeling_cohere.CohereLayerNorm": "cohere_layer_norm",
    "transformers.models.nemotron.modeling_nemotron.NemotronLayerNorm1P": "nemotron_layer_norm_1p",
}

Factory = typing.Callable[[], nn.Module]


class NotInstantiable(Exception):
    """The class could not be built from its signature alone."""


@dataclass(frozen=True)
class Row:
    """The outcome for one class: formula, generic, refused, not-instantiable or error."""

    name: str
    outcome: str
    detail: str = ""


@dataclass(frozen=True)
class Census:
    """All rows, the norm-named classes that are no leaf norm, and the modules that could not be imported."""

    rows: tuple[Row, ...]
    excluded: tuple[str, ...]
    unimportable: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# enumeration
# --------------------------------------------------------------------------------------------
def _import_modeling_modules() -> tuple[list[types.ModuleType], list[str]]:
    """Every modeling module of the installed transformers, and those that need a missing package."""
    root = Path(transformers.models.__file__).parent
    modules, missing = [], []
    for path in sorted(root.glob("*/modeling_*.py")):
        name = f"transformers.models.{path.parent.name}.{path.stem}"
        try:
            modules.append(importlib.import_module(name))
        except ImportError as error:
            missing.append(f"{name} ({error})")
    return modules, missing


def _is_norm_class(obj: object, module_name: str) -> bool:
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module_name):
        return False
    if issubclass(obj, transformers.PreTrainedModel):
        return False
    return "Norm" in obj.__name__ or issubclass(obj, (nn.LayerNorm, nn.RMSNorm))


@functools.cache
def norm_classes() -> tuple[dict[str, type], tuple[str, ...]]:
    """``{qualified name: class}`` of every norm-named class, and the unimportable modules."""
    modules, missing = _import_modeling_modules()
    found = {}
    for module in modules:
        for name, obj in vars(module).items():
            if _is_norm_class(obj, module.__name__):
                found[f"{module.__name__}.{name}"] = obj
    return found, tuple(missing)


# --------------------------------------------------------------------------------------------
# instantiation
# --------------------------------------------------------------------------------------------
def _named(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _parameters(cls: type) -> list[inspect.Parameter]:
    """Constructor parameters, following ``(*args, **kwargs)`` on to the base class.

    The named positional parameters of a subclass fill the base's first positional ones
    (``super().__init__(hidden_size, *args, **kwargs)``); the base's other ones are added.
    """
    inits = [vars(k)["__init__"] for k in cls.__mro__ if "__init__" in vars(k) and k is not nn.Module]
    params: list[inspect.Parameter] = []
    consumed = 0
    for init in inits:
        own = list(inspect.signature(init).parameters.values())[1:]
        names = {p.name for p in params}
        positional = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        params += [p for p in _named(own) if p.name not in names and p not in positional[:consumed]]
        consumed = max(consumed, len(positional))
        if len(_named(own)) == len(own):  # no pass-through to the base class
            break
    return params


def _config_class(cls: type, param: inspect.Parameter) -> type:
    """The annotated config class, else the config class of the model the module belongs to."""
    module = inspect.getmodule(cls)
    annotation = param.annotation
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(module))  # noqa: S307 - transformers' own annotation
    if inspect.isclass(annotation) and issubclass(annotation, transformers.PreTrainedConfig):
        return annotation
    model_type = module.__name__.split(".")[2]
    configs = [c for c in vars(module).values()
               if inspect.isclass(c) and issubclass(c, transformers.PreTrainedConfig)
               and getattr(c, "model_type", "").replace("-", "_") == model_type]
    if len(configs) != 1:
        raise NotInstantiable(f"no config class for the unannotated config argument of {cls.__name__}")
    return configs[0]


def _arguments(cls: type, size: int | tuple[int, ...], small_config: bool) -> dict[str, typing.Any]:
    """Keyword arguments for a small instance of ``cls``."""
    kwargs = {}
    for param in _parameters(cls):
        if param.name in SIZE_ARGS:
            kwargs[param.name] = size
        elif param.name == "config":
            config_cls = _config_class(cls, param)
            kwargs["config"] = config_cls(hidden_size=D) if small_config else config_cls()
        elif param.default is param.empty:
            if param.name not in OTHER_ARGS:
                raise NotInstantiable(f"no value for required argument {param.name!r}")
            kwargs[param.name] = OTHER_ARGS[param.name]
    return kwargs


def build(cls: type, device: str = "cpu") -> nn.Module:
    """A small instance of ``cls`` on ``device`` (``"meta"`` to look at a model class for free).

    Sizes are tried as ``D`` then ``(2, D)`` (per-head norms), configs with ``hidden_size=D``
    then with their defaults (head counts that must divide the hidden size).
    """
    error: Exception | None = None
    for size, small_config in itertools.product((D, (2, D)), (True, False)):
        try:
            kwargs = _arguments(cls, size, small_config)
            with torch.device(device):
                return cls(**kwargs)
        except NotInstantiable:
            raise
        except Exception as failure:  # noqa: BLE001 - the next attempt, or the reason
            error = error or failure
    raise NotInstantiable(f"{type(error).__name__}: {error}".splitlines()[0][:120])


def factory(cls: type) -> Factory:
    return functools.partial(build, cls)


def _structure(cls: type) -> nn.Module:
    """An instance to classify: on the meta device (a whole model costs nothing), else on CPU."""
    try:
        return build(cls, "meta")
    except NotInstantiable:
        return build(cls)


# --------------------------------------------------------------------------------------------
# the census
# --------------------------------------------------------------------------------------------
def outcome(name: str, make: Factory) -> Row:
    """Plan ``make()``: a formula, the generic path, `Unsupported` (refused), or anything else (error)."""
    try:
        module = make()
    except NotInstantiable as error:
        return Row(name, "not-instantiable", str(error))
    try:
        plan = plan_for(module)
    except Unsupported as error:
        return Row(name, "refused", str(error))
    except Exception as error:  # noqa: BLE001 - reported by test_every_norm_class_has_an_outcome
        return Row(name, "error", f"{type(error).__name__}: {error}")
    return Row(name, "generic") if plan.generic else Row(name, "formula", plan.formula.name)


def classify(name: str, cls: type) -> Row | None:
    """The row of one transformers class, or None when it is no leaf LayerNorm / RMSNorm."""
    try:
        if not is_norm_candidate(_structure(cls)):
            return None
    except NotInstantiable as error:
        return Row(name, "not-instantiable", str(error))
    return outcome(name, factory(cls))


def factories() -> dict[str, Factory]:
    """Every class of the table (torch's own norms first) and how to build it."""
    return {**TORCH_NORMS, **{name: factory(cls) for name, cls in norm_classes()[0].items()}}


@functools.cache
def census() -> Census:
    classes, missing = norm_classes()
    rows = [outcome(name, make) for name, make in TORCH_NORMS.items()]
    excluded = []
    for name, cls in classes.items():
        row = classify(name, cls)
        if row is None:
            excluded.append(name)
        else:
            rows.append(row)
    return Census(tuple(rows), tuple(excluded), missing)


def markdown_table(rows: typing.Iterable[Row]) -> str:
    order = {"formula": 0, "generic": 1, "refused": 2, "not-instantiable": 3, "error": 4}
    lines = ["| class | outcome | formula / reason |", "|---|---|---|"]
    for row in sorted(rows, key=lambda r: (order[r.outcome], r.detail, r.name)):
        short = row.name.replace("transformers.models.", "")
        lines.append(f"| `{short}` | {row.outcome} | {row.detail.replace('|', '/')} |")
    return "\n".join(lines)


def patched_names() -> list[str]:
    return [row.name for row in census().rows if row.outcome in ("formula", "generic")]


def test_every_norm_class_has_an_outcome():
    """Each class gets a plan or `Unsupported`, never another error; the table is printed."""
    result = census()
    counts = {o: sum(r.outcome == o for r in result.rows) for o in ("formula", "generic", "refused", "not-instantiable")}
    print(f"\n{len(result.rows)} norm classes: {counts}; {len(result.excluded)} norm-named classes are no leaf "
          f"LayerNorm/RMSNorm; {len(result.unimportable)} modeling modules need a missing package: "
          f"{', '.join(result.unimportable)}\n")
    print(markdown_table(result.rows))
    print("\nnot leaf LayerNorm/RMSNorm:", ", ".join(n.rsplit(".", 1)[1] for n in result.excluded))
    errors = [row for row in result.rows if row.outcome == "error"]
    assert not errors, errors
    assert counts["formula"] > 100


def test_known_classes_match_their_formula():
    """Nemotron's ``1 + w`` LayerNorm and the reference classes of each formula are identified."""
    rows = {row.name: row for row in census().rows}
    got = {name: (rows[name].outcome, rows[name].detail) for name in EXPECTED}
    assert got == {name: ("formula", formula) for name, formula in EXPECTED.items()}


def test_plans_are_stable():
    """Planning a fresh instance again gives the same outcome for every class."""
    make = factories()
    assert [outcome(row.name, make[row.name]) for row in census().rows] == list(census().rows)


# --------------------------------------------------------------------------------------------
# every patched class against a brute-force oracle
# --------------------------------------------------------------------------------------------
class Wrapper(nn.Module):
    """A model around one norm: ``x`` (batch first) plays ``input_ids`` for hf_gns."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def fresh_norm(name: str) -> nn.Module:
    """A small instance with random parameters (Gemma-style zero weights give degenerate gradients)."""
    module = factories()[name]()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def oracle(norm: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, tuple[float, float]]:
    """``{param: (sum_i ||c_i||^2, ||sum_i c_i||^2)}`` in float64, one autograd call per example."""
    params = dict(norm.named_parameters())
    y = norm(x)
    per_example = [torch.autograd.grad((y[i] * g[i]).sum(), list(params.values()), retain_graph=True)
                   for i in range(x.shape[0])]
    out = {}
    for k, name in enumerate(params):
        c = torch.stack([grads[k].double().reshape(-1) for grads in per_example])
        out[name] = (c.pow(2).sum().item(), c.sum(0).pow(2).sum().item())
    return out


#: Relative tolerance of the statistics per input dtype. With bfloat16 inputs the oracle is
#: PyTorch's own backward, whose CPU LayerNorm kernel returns the weight gradient of a bfloat16
#: input only to bfloat16 accuracy (~1e-3 relative, float32 parameters or not); hf_gns's
#: recomputation is float32-exact, so the two agree to one bfloat16 epsilon.
RTOL = {torch.float32: 1e-4, torch.bfloat16: torch.finfo(torch.bfloat16).eps}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", patched_names())
def test_patched_class_matches_oracle(name: str, x_dtype: torch.dtype):
    """Patched forward equals the unpatched one; per-example statistics equal the oracle's."""
    norm = fresh_norm(name)
    shape = (2, 3, *next(norm.parameters()).shape)  # (2, 3, D), or (2, 3, heads, D) for a per-head norm
    x = torch.randn(shape).to(x_dtype)
    g = torch.randn(shape).to(x_dtype)
    expected_y = norm(x).detach()
    expected = oracle(norm, x, g)
    model = Wrapper(norm)
    assert hf_gns.patch_model(model, kernel="torch") == ["norm"]
    y = model(x)
    assert torch.equal(y, expected_y)
    y.backward(g.to(y.dtype))
    stats = hf_gns.gather_stats(model).per_param
    for pname, (example_sq, batch_sq) in expected.items():
        got = stats[f"norm.{pname}"]
        assert got.num_examples == 2
        assert _rel(got.example_sq_norm_sum, example_sq) <= RTOL[x_dtype], (pname, got, example_sq)
        assert _rel(got.batch_sq_norm, batch_sq) <= RTOL[x_dtype], (pname, got, batch_sq)
