"""`GNSCallback`: gradient noise scale in every Hugging Face Trainer run.

Every optimizer step the callback gathers the per-example statistics recorded by the
patched norm layers (one host sync, all-reduced across ranks), turns them into unbiased
|G|^2 and tr(Sigma) estimates, smooths both with EMAs and logs ``gns/*`` keys through the
Trainer's own logging, so they reach every ``report_to`` integration and
``trainer.state.log_history`` next to loss, grad_norm and learning_rate.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.training_args import ParallelMode

from . import resume
from .batch_control import STATE_FILE, TrainerBatchControl, load_state, save_state
from .distributed import sum_over_ranks
from .estimator import GNSTracker, NotEstimable, estimate
from .measure import GNSMeter, MeterViews, read_loss_scale
from .schedule import BatchSizePolicy
from .token_clock import LR_SCALINGS, LRScaling
from .patch import pass_counters, patch_model, patched_modules, place_statistics
from .stats import reset_stats
from .validation import check_choice, check_fraction, check_int, check_number, check_type

logger = logging.getLogger(__name__)


def refuse_data_parallel(args: TrainingArguments) -> None:
    """The Trainer wraps the model in ``nn.DataParallel`` when it sees several GPUs without a
    launcher; its replicas would run the patched norms on the original module's weights."""
    if args.n_gpu > 1 and args.parallel_mode == ParallelMode.NOT_DISTRIBUTED:
        raise RuntimeError(
            f"hf_gns does not support nn.DataParallel, which the Trainer uses with {args.n_gpu} visible GPUs "
            "and no launcher: launch with `torchrun --nproc_per_node N` or `accelerate launch` "
            "(DistributedDataParallel, supported), or make one GPU visible (CUDA_VISIBLE_DEVICES=0)")


#: torch.compile modes that capture CUDA graphs, under which the statistics are not yet verified
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def warn_cuda_graph_mode(args: TrainingArguments) -> None:
    """Say once, at train start, that a CUDA-graph compile mode is not supported yet."""
    mode = getattr(args, "torch_compile_mode", None)
    if getattr(args, "torch_compile", False) and mode in CUDA_GRAPH_MODES:
        logger.warning(
            "hf_gns: torch_compile_mode=%r captures CUDA graphs, under which hf_gns is not verified (on the GPU "
            "its accumulation loop failed with 'accessing tensor output of CUDAGraphs that has been overwritten'); "
            "use the default mode or 'max-autotune-no-cudagraphs'", mode)


def attach(trainer, callback: "GNSCallback | None" = None, **kwargs) -> "GNSCallback":
    """Add GNS to ``trainer`` and return its callback (``GNSCallback(**kwargs)`` unless given).

    The Trainer calls its ``report_to`` integrations (TensorBoard, W&B, ...) before the callbacks
    passed to it, so keys a user callback adds to a log arrive after they have written it. This
    puts the callback first, through the Trainer's public ``remove_callback`` / ``add_callback``,
    so ``gns/*`` reach every integration at the same step as ``loss``.
    """
    if callback is None:
        callback = GNSCallback(**kwargs)
    elif kwargs:
        raise TypeError(f"attach: give either a callback or its arguments, not both (got {sorted(kwargs)})")
    elif not isinstance(callback, GNSCallback):
        raise TypeError(f"attach: callback must be a GNSCallback, got {type(callback).__name__}")
    present = list(trainer.callback_handler.callbacks)
    others = [c for c in present if c is not callback]
    for each in present:
        trainer.remove_callback(each)
    for each in [callback] + others:
        trainer.add_callback(each)
    callback.trainer = trainer
    if not getattr(trainer.log, "_hf_gns", False):
        trainer.log = _log_with_gns(trainer, trainer.log)
    return callback


def _log_with_gns(trainer, log):
    """``Trainer.log`` (the method the Trainer documents for overriding) with the pending ``gns/*``
    values merged into ``logs`` first: they then reach ``state.log_history`` and every callback in
    the same dict as ``loss``."""

    @functools.wraps(log)
    def log_with_gns(logs: dict[str, float], *args, **kwargs):
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, GNSCallback):
                callback.merge_pending(logs, trainer.state.global_step)
        return log(logs, *args, **kwargs)

    log_with_gns._hf_gns = True
    return log_with_gns


def _integrations(args: TrainingArguments) -> list[str]:
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    return [r for r in report_to if r not in (None, "none")]


class GNSCallback(MeterViews, TrainerCallback):
    """Measure and log the gradient noise scale; optionally let it drive the batch size.

    Args:
        ema: decay of the EMAs of |G|^2 and tr(Sigma) (per optimizer step).
        log_layers: also log per-parameter B_simple (``gns/layer/<param>``).
        batch_size_policy: None (measure only), or a batch-size policy: `hf_gns.GNSPolicy`,
            `hf_gns.LinearSchedule`, `hf_gns.StepSchedule`, any `hf_gns.BatchSizePolicy`, or the
            string form of the first three (``"gns:max_batch=256"``, see `hf_gns.schedule`):
            the global batch then follows it through the gradient accumulation count, and
            the LR schedule, the budget and ``max_steps`` are counted in tokens.
        max_tokens: token budget of a run with a batch-size policy (default: ``max_steps``
            optimizer steps at the starting batch).
        lr_scaling: with a batch-size policy, scale the LR with the batch: "none",
            "sqrt" (Adam-family) or "linear".
        batch_size: the old name of ``batch_size_policy`` (deprecated).
        full_model_every: every N optimizer steps, also measure the whole model's GNS and the
            normalization layers' on the step's last micro-batch, exactly (one backward per
            example; slow): ``gns/full_model_*`` keys, to check the norm-layer proxy. Each
            measurement's ``*_step_g2`` / ``*_step_trace_sigma`` are logged too, to average over
            windows of many measurements: one micro-batch cannot resolve a B_simple above its size.
        prefix: prefix of every logged key.
        history_file: name of the per-step JSON-lines history written to ``output_dir``
            on the main process (None to disable).
        model_card: at the end of training, add a "Gradient noise scale" section (and, with
            matplotlib, ``gns.png`` / ``batch_size.png`` / ``loss.png``) to ``output_dir/README.md``.
            ``Trainer.create_model_card`` rewrites that file: run ``hf-gns card OUTPUT_DIR`` after it.
    """

    def __init__(
        self,
        ema: float = 0.99,
        log_layers: bool = False,
        batch_size_policy: BatchSizePolicy | str | None = None,
        max_tokens: float | None = None,
        lr_scaling: LRScaling = "none",
        full_model_every: int | None = None,
        prefix: str = "gns/",
        history_file: str | None = "gns_history.jsonl",
        model_card: bool = True,
        batch_size: BatchSizePolicy | str | None = None,
    ) -> None:
        if batch_size is not None:
            if batch_size_policy is not None:
                raise TypeError("GNSCallback: give batch_size_policy only (batch_size is its old name)")
            warnings.warn("GNSCallback(batch_size=...) is now batch_size_policy=...", FutureWarning, stacklevel=2)
            batch_size_policy = batch_size
        check_fraction("ema", ema)
        check_type("log_layers", log_layers, bool, "True or False")
        check_number("max_tokens", max_tokens, optional=True)
        check_choice("lr_scaling", lr_scaling, LR_SCALINGS)
        check_int("full_model_every", full_model_every, 1, optional=True,
                  hint="use None to disable the whole-model measurement")
        check_type("prefix", prefix, str, "a string")
        check_type("history_file", history_file, (str, type(None)), "None or a file name")
        check_type("model_card", model_card, bool, "True or False")
        self.meter = GNSMeter(ema, prefix, log_layers)
        self.ema = ema
        self.log_layers = log_layers
        self.prefix = prefix
        self.history_file = history_file
        self.model_card = model_card
        self.card_path: str | None = None
        self.control = None if batch_size_policy is None else TrainerBatchControl(batch_size_policy, max_tokens, lr_scaling)
        self.full_model_every = full_model_every
        self.full_trackers = {"full_model": GNSTracker(ema), "full_model_ln": GNSTracker(ema)}
        self._full_values: dict[str, float] = {}
        self.trainer = None
        self._to_log: dict[str, float] = {}
        self._scale: Any = 1.0
        self._skipped_step = False
        self._model = None
        self._inputs = None  # full_model.InputKeeper while full_model_every is on

    # -- wiring ----------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        if self.trainer is None and _integrations(args) and state.is_world_process_zero:
            logger.warning(
                "hf_gns: GNSCallback was given in callbacks=[...]: the Trainer calls the report_to integrations "
                "(%s) before it, so gns/* reach trainer.state.log_history and %s but not them. Add it with "
                "hf_gns.attach(trainer) instead.", ", ".join(_integrations(args)), self.history_file or "the history")
        refuse_data_parallel(args)
        if state.is_world_process_zero:
            warn_cuda_graph_mode(args)
        self._model = model
        if model is not None and not patched_modules(model):
            names = patch_model(model)
            logger.warning("hf_gns: the model was not patched: GNSCallback patched its %d norm modules (call "
                           "hf_gns.patch_model(model) yourself to choose kernel / include / exclude; to stop "
                           "measuring, remove the callback or use hf_gns.set_recording(model, False))", len(names))
        if model is not None:
            place_statistics(model)
            reset_stats(model)
            for counter in pass_counters(model):
                counter.take_positions()
            if self.full_model_every and self._inputs is None:
                from .full_model import InputKeeper

                self._inputs = InputKeeper(model)
        step_for_trainer = self._restore_real_step(state)
        saved = self._load_checkpoint_state(args, state)
        if self.control is not None:
            self.control.on_train_begin(args, state, kwargs.get("lr_scheduler"),
                                        self.trainer.callback_handler.callbacks if self.trainer is not None else (),
                                        saved.get("batch_control") if saved else None,
                                        kwargs.get("train_dataloader"), step_for_trainer)

    def _restore_real_step(self, state: TrainerState) -> int | None:
        """On resume from a checkpoint saved after the batch grew (`hf_gns.resume`): the real step
        back into ``state``; returns the step the Trainer placed the data from (None otherwise)."""
        marked = resume.marked_steps(state)
        if marked is None:
            return None
        real, step_for_trainer = marked
        if self.trainer is None:
            raise RuntimeError(
                f"hf_gns: this checkpoint was saved after the batch grew, with hf_gns.attach, at step {real}; the "
                f"Trainer read it as step {step_for_trainer} to place the data exactly. Resume with "
                "hf_gns.attach(trainer) as well (GNSCallback given in callbacks=[...] cannot restore the Trainer's "
                "step counters)")
        resume.restore_real_step(state, self.trainer, real, step_for_trainer)
        return step_for_trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.control is not None:
            self.control.on_epoch_begin()

    def on_substep_end(self, args, state, control, **kwargs):
        if self.control is not None:
            self.control.on_substep_end()

    # -- per step --------------------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.full_model_every and (state.global_step + 1) % self.full_model_every == 0:
            self._measure_full_model()
        self._scale = read_loss_scale(getattr(optimizer, "scaler", None))

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self._skipped_step = bool(getattr(optimizer, "step_was_skipped", False))
        if self.control is not None and self._model is not None:
            # every rank counts its own input positions; the sum keeps all ranks' LR and budget equal
            positions = sum(c.take_positions() for c in pass_counters(self._model))
            self.control.on_optimizer_step(sum_over_ranks(positions), state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model = model if model is not None else self._model
        if model is None:
            return
        # start this step's reduction; read the previous step's (a fixed one-step lag, so the
        # GPU queue never drains and every rank decides on the same numbers)
        batch_values = self.control.log_values(self.prefix) if self.control is not None else {}
        batch_values.update(self._full_values)
        self._full_values = {}
        self.meter.start(model, state.global_step, self._scale, self._skipped_step, batch_values)
        self._skipped_step = False
        self._resolve(upto=state.global_step - 1)
        if self.control is not None:
            self.control.on_step_end(args, state, control, self.tracker)

    def _measure_full_model(self) -> None:
        """Exact whole-model and norm-layer GNS on the last micro-batch (before the update)."""
        from .full_model import per_example_gradient_stats, subset

        model = self._model
        inputs = self._inputs.inputs if self._inputs is not None else None
        if not inputs:
            return
        norm_names = [f"{name}.{n}" if name else n for name, st in patched_modules(model) for n in st.plan.param_names]
        try:
            stats = per_example_gradient_stats(model, inputs)
            values = {}
            for key, part in (("full_model", stats), ("full_model_ln", subset(stats, norm_names))):
                est = estimate(part)
                self.full_trackers[key].update(est)
                values[f"{self.prefix}{key}_b_simple"] = self.full_trackers[key].b_simple
                values[f"{self.prefix}{key}_step_b_simple"] = est.b_simple
                # the step's estimates themselves, so that any window can be averaged afterwards
                values[f"{self.prefix}{key}_step_g2"] = est.g2
                values[f"{self.prefix}{key}_step_trace_sigma"] = est.trace_sigma
            self._full_values = values
        except (NotEstimable, ValueError) as error:
            logger.warning("hf_gns: whole-model measurement skipped: %s", error)

    def _resolve(self, upto: int) -> None:
        """Fold in the measurements of every step <= ``upto``; the newest one is logged next."""
        record = self.meter.resolve(upto)
        if record is not None:
            self._to_log = record

    def merge_pending(self, logs: dict[str, float], step: int) -> None:
        """Add the newest measured step's values (not logged yet) to ``logs``."""
        self._resolve(upto=step)
        if self._to_log:
            logs.update(self._to_log)
            self._to_log = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        # with hf_gns.attach the values were merged before the Trainer stored the log; without it
        # they join the Trainer's log_history entry of this step here, after the Trainer made it
        self._resolve(upto=state.global_step)
        if not self._to_log or logs is None:
            return
        logs.update(self._to_log)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._to_log)
        self._to_log = {}

    # -- persistence -----------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        self._resolve(upto=state.global_step)
        self._write_history(args, state)
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            save_state(checkpoint, self.state_dict())
            # after the batch grew, the checkpoint shows the Trainer the step it resumes the data from
            # exactly (restoring the real one needs the Trainer: hf_gns.attach)
            step_for_trainer = self.control.trainer_step(state) if self.control is not None else None
            if self.trainer is not None and step_for_trainer not in (None, state.global_step):
                resume.mark_checkpoint(checkpoint, state.global_step, step_for_trainer)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue the same trajectory."""
        return {**self.meter.state_dict(),
                "batch_control": self.control.state_dict() if self.control is not None else None}

    def load_state_dict(self, data: dict) -> None:
        self.meter.load_state_dict(data)

    def _load_checkpoint_state(self, args, state) -> dict | None:
        if state.global_step == 0:
            return None
        saved = load_state(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
        if saved is None:
            logger.warning("hf_gns: resumed at step %d without %s: GNS EMAs and batch-size state start afresh",
                           state.global_step, STATE_FILE)
            return None
        self.load_state_dict(saved)
        return saved

    def on_train_end(self, args, state, control, **kwargs):
        if self._inputs is not None:
            self._inputs.remove()
            self._inputs = None
        self._resolve(upto=state.global_step)
        self._write_history(args, state)
        if self.model_card and state.is_world_process_zero and args.output_dir and self.history:
            self.card_path = self._write_model_card(args.output_dir, state.log_history)

    def _write_model_card(self, output_dir: str, log_history: list[dict]) -> str | None:
        """Plots (when matplotlib is there) and the model card's GNS section; never fails the run."""
        from .model_card import update_model_card

        plot_path = None
        try:
            from .plot import merge_rows, plot_runs

            run = merge_rows(os.path.basename(os.path.abspath(output_dir)), output_dir, log_history, self.history)
            plots = plot_runs([run], output_dir)
            plot_path = next((p for p in plots if p.endswith("gns.png")), None)
        except ImportError:
            logger.info("hf_gns: matplotlib is not installed; the model card gets no plot")
        except Exception as error:  # a report must not crash a finished run
            logger.warning("hf_gns: could not draw the GNS plots: %s", error)
        try:
            return update_model_card(output_dir, self.history, plot_path=plot_path)
        except Exception as error:
            logger.warning("hf_gns: could not write the model card section: %s", error)
            return None

    @property
    def last(self) -> dict[str, float]:
        """The most recent measured step's logged values."""
        return self.history[-1] if self.history else {}

    def _write_history(self, args: TrainingArguments, state: TrainerState) -> None:
        if not self.history_file or not state.is_world_process_zero or not args.output_dir:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, self.history_file), "w") as f:
            for row in self.history:
                f.write(json.dumps(row) + "\n")

