"""Train a small causal language model with the Hugging Face Trainer and hf_gns.

By default everything is offline: the corpus is Python's own documentation and
standard library source (see corpus.py), the tokenizer is a byte-level BPE
trained on it, and the model is a tiny Llama built from a config.

    python examples/train_lm.py                      # tiny Llama, with hf_gns
    python examples/train_lm.py --no_gns --max_steps 5
    accelerate launch examples/train_lm.py --bf16    # same script, any devices
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProgressCallback,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from corpus import default_corpus_files, group_texts, load_text_dataset, train_bpe_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # model and tokenizer
    p.add_argument("--model_name_or_path", default=None, help="pretrained model; default: a tiny model from a config")
    p.add_argument("--model_type", default="llama", choices=["llama", "gpt2"], help="architecture when no model name is given")
    p.add_argument("--tokenizer_name", default=None, help="pretrained tokenizer; default: the model's, or BPE trained on the corpus")
    p.add_argument("--vocab_size", type=int, default=8192, help="vocab size of the BPE tokenizer trained on the corpus")
    p.add_argument("--hidden_size", type=int, default=128)
    p.add_argument("--num_hidden_layers", type=int, default=4)
    p.add_argument("--num_attention_heads", type=int, default=4)
    # data
    p.add_argument("--dataset_name", default=None, help="Hub dataset with a 'text' column; default: the offline corpus")
    p.add_argument("--max_train_chars", type=int, default=2_000_000, help="size limit of the offline corpus (0: no limit)")
    p.add_argument("--no_stdlib", action="store_true", help="offline corpus: pydoc topics only, no stdlib source")
    p.add_argument("--cache_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "hf_gns"))
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--preprocessing_num_workers", type=int, default=None, help="processes that tokenize the corpus")
    # training
    p.add_argument("--output_dir", default="runs/train_lm")
    p.add_argument("--per_device_train_batch_size", type=int, default=8)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=float, default=0.1, help="steps, or a fraction of max_steps if < 1")
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: none; the Trainer's default 1.0)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--torch_compile", action="store_true", help="compile the model (GNS is recorded the same)")
    p.add_argument("--report_to", default="none", help="comma-separated, e.g. 'wandb,tensorboard'")
    p.add_argument("--logging_steps", type=int, default=1)
    p.add_argument("--print_every", type=int, default=50,
                   help="print a short progress line every N logs (every log still reaches report_to and log_history)")
    p.add_argument("--eval_steps", type=int, default=None, help="evaluate every N steps (always once at the end)")
    p.add_argument("--max_eval_samples", type=int, default=None, help="evaluate on N validation blocks (a fixed sample)")
    p.add_argument("--save_steps", type=int, default=None, help="save a checkpoint every N steps (default: never)")
    p.add_argument("--save_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --output_dir, if there is one (GNS state included)")
    p.add_argument("--no_eval_accuracy", action="store_true", help="evaluate loss / perplexity only, no token accuracy")
    # gradient noise scale
    p.add_argument("--no_gns", action="store_true", help="train without hf_gns")
    p.add_argument("--kernel", default="auto", choices=["auto", "torch", "triton"], help="hf_gns per-example norm kernel")
    p.add_argument("--batch_size_policy", default="none", help="hf_gns batch size policy, e.g. 'gns', 'linear:START:END'")
    p.add_argument("--max_tokens", type=float, default=None, help="token budget with a batch size policy")
    p.add_argument("--lr_scaling", default="none", choices=["none", "sqrt", "linear"], help="LR scaling on batch growth")
    p.add_argument("--no_report", action="store_true", help="skip the plots and the model card section at the end")
    p.add_argument("--full_model_every", type=int, default=None,
                   help="also measure the whole model's GNS exactly every N steps (slow diagnostic)")
    args = p.parse_args(argv)
    if not args.max_grad_norm >= 0:
        p.error(f"--max_grad_norm={args.max_grad_norm}: expected a norm >= 0 (0 turns clipping off)")
    return args


def build_tokenizer(args: argparse.Namespace, train_file: str | None, corpus_dir: str) -> PreTrainedTokenizerBase:
    """Load a pretrained tokenizer, or train (and cache) a BPE one on the corpus."""
    name = args.tokenizer_name or args.model_name_or_path
    if name is not None:
        tokenizer = AutoTokenizer.from_pretrained(name)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    if train_file is None:
        raise ValueError("--dataset_name without a model needs --tokenizer_name")
    return train_bpe_tokenizer([train_file], args.vocab_size, os.path.join(corpus_dir, f"bpe-{args.vocab_size}"))


def eval_blocks(blocks, limit: int | None):
    """``limit`` validation blocks drawn once with a fixed seed (the same in every run; all of
    them when ``limit`` is None)."""
    if limit is None or limit >= len(blocks):
        return blocks
    if limit < 1:
        raise ValueError(f"--max_eval_samples={limit}: expected a positive number of validation blocks")
    return blocks.shuffle(seed=0).select(range(limit))


def build_model(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Load a pretrained causal LM, or build a tiny one from a config."""
    if args.model_name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        return model
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if args.model_type == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=args.hidden_size,
            intermediate_size=4 * args.hidden_size,
            num_hidden_layers=args.num_hidden_layers,
            num_attention_heads=args.num_attention_heads,
            num_key_value_heads=args.num_attention_heads,
            max_position_embeddings=args.block_size,
            tie_word_embeddings=False,
            **ids,
        )
    else:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=args.hidden_size,
            n_layer=args.num_hidden_layers,
            n_head=args.num_attention_heads,
            n_positions=args.block_size,
            tie_word_embeddings=False,
            **ids,
        )
    return AutoModelForCausalLM.from_config(config)


def token_accuracy_metrics():
    """(compute_metrics, preprocess_logits_for_metrics) for next-token accuracy through `evaluate`,
    from the local metric module in examples/metrics (works offline); (None, None) without `evaluate`."""
    try:
        import evaluate
    except ImportError:
        print("evaluate is not installed: eval reports loss and perplexity only")
        return None, None
    metric = evaluate.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "token_accuracy.py"))

    def preprocess_logits_for_metrics(logits, labels):
        return logits.argmax(dim=-1)  # keep only the predicted ids, not [batch, T, vocab] logits

    def compute_metrics(eval_pred):
        predictions, labels = eval_pred.predictions[:, :-1], eval_pred.label_ids[:, 1:]  # next-token shift
        keep = labels != -100
        return metric.compute(predictions=predictions[keep].tolist(), references=labels[keep].tolist())

    return compute_metrics, preprocess_logits_for_metrics


class ShortProgress(ProgressCallback):
    """The Trainer's progress bar, printing one short line every ``every`` training logs (and every
    evaluation) instead of each log's whole dict."""

    KEYS = ("loss", "learning_rate", "gns/b_simple", "gns/b_simple_tokens", "gns/batch_size")

    def __init__(self, every: int = 50) -> None:
        super().__init__()
        self.every = max(1, every)
        self.logs_seen = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self.logs_seen += 1
            if self.logs_seen % self.every and state.global_step != state.max_steps:
                return
        shown = {k: v for k, v in logs.items() if (k in self.KEYS or k.startswith("eval_")) and isinstance(v, (int, float))}
        if shown:
            self.training_bar.write(f"step {state.global_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    set_seed(args.seed)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        max_steps=args.max_steps,
        max_grad_norm=args.max_grad_norm,
        seed=args.seed,
        bf16=args.bf16,
        torch_compile=args.torch_compile,
        report_to=[r for r in args.report_to.split(",") if r] or "none",
        logging_steps=args.logging_steps,
        eval_strategy="steps" if args.eval_steps else "no",
        eval_steps=args.eval_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        save_total_limit=args.save_total_limit,
        dataloader_drop_last=True,  # every step sees the same batch size
        ddp_find_unused_parameters=False,  # every parameter gets a gradient
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
    )

    # Data and tokenizer: built by the main process first, then read from cache by the others.
    corpus_dir = os.path.join(
        args.cache_dir,
        "corpus",
        f"py{sys.version_info.major}.{sys.version_info.minor}"
        f"-{args.max_train_chars or 'all'}{'-nostdlib' if args.no_stdlib else ''}",
    )
    with training_args.main_process_first(desc="corpus and tokenizer"):
        files = None
        if args.dataset_name is None:
            files = default_corpus_files(corpus_dir, args.max_train_chars or None, include_stdlib=not args.no_stdlib)
        tokenizer = build_tokenizer(args, files[0] if files else None, corpus_dir)
        raw = load_text_dataset(args.dataset_name, files, cache_dir=os.path.join(args.cache_dir, "datasets"))
        lm_data = group_texts(raw, tokenizer, args.block_size, num_proc=args.preprocessing_num_workers)
    eval_split = "validation" if "validation" in lm_data else "test" if "test" in lm_data else None

    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())

    gns_callback = None
    if not args.no_gns:
        try:
            import hf_gns
        except ImportError as e:
            raise SystemExit(f"hf_gns is not importable ({e}); install it or pass --no_gns") from e

        patched = hf_gns.patch_model(model, kernel=args.kernel)
        policy = None if args.batch_size_policy == "none" else args.batch_size_policy
        gns_callback = hf_gns.GNSCallback(batch_size_policy=policy, max_tokens=args.max_tokens, lr_scaling=args.lr_scaling,
                                          full_model_every=args.full_model_every, model_card=not args.no_report)
        if training_args.process_index == 0:
            print(f"hf_gns: patched {len(patched)} modules")

    compute_metrics, preprocess_logits = (None, None)
    if eval_split and not args.no_eval_accuracy:
        compute_metrics, preprocess_logits = token_accuracy_metrics()
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=lm_data["train"],
        eval_dataset=eval_blocks(lm_data[eval_split], args.max_eval_samples) if eval_split else None,
        data_collator=default_data_collator,  # blocks are packed: no padding, labels already set
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess_logits,
    )
    if gns_callback is not None:
        hf_gns.attach(trainer, gns_callback)  # first among the callbacks: report_to sees gns/*
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ShortProgress(args.print_every))
    if trainer.is_world_process_zero():
        print(
            f"model: {model.config.model_type}, {n_params / 1e6:.2f}M params | "
            f"train blocks: {len(lm_data['train'])} x {args.block_size} tokens | "
            f"setup took {time.time() - t0:.1f}s"
        )

    last = get_last_checkpoint(args.output_dir) if args.resume and os.path.isdir(args.output_dir) else None
    if last is not None and trainer.is_world_process_zero():
        print(f"resuming from {last}")
    train_result = trainer.train(resume_from_checkpoint=last)
    eval_metrics = trainer.evaluate() if eval_split else {}
    trainer.save_state()

    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        last_loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
        b_simple = next((h["gns/b_simple"] for h in reversed(history) if "gns/b_simple" in h), None)
        print("\n==== summary ====")
        print(f"steps:            {trainer.state.global_step}")
        logged = f"{last_loss:.4f} (last logged), " if last_loss is not None else "none logged, "
        print(f"train loss:       {logged}{train_result.training_loss:.4f} (mean)")
        runtime = train_result.metrics.get("train_runtime")
        if runtime:
            print(f"train time:       {runtime:.1f}s ({trainer.state.global_step / runtime:.2f} steps/s)")
        if "eval_loss" in eval_metrics:
            eval_loss = eval_metrics["eval_loss"]
            ppl = math.exp(eval_loss) if eval_loss < 100 else float("inf")
            print(f"eval loss:        {eval_loss:.4f} (perplexity {ppl:.2f})")
        if "eval_accuracy" in eval_metrics:
            print(f"eval accuracy:    {eval_metrics['eval_accuracy']:.4f} (next token, via evaluate)")
        if b_simple is not None:
            print(f"gns/b_simple:     {b_simple:.4g} (last logged)")
        elif not args.no_gns:
            print("gns/b_simple:     not logged")
        if gns_callback is not None and not args.no_report:
            from hf_gns.model_card import update_model_card
            from hf_gns.plot import plot_runs

            plots = plot_runs([args.output_dir], args.output_dir)
            card = update_model_card(args.output_dir, gns_callback.history,
                                     plot_path=next((p for p in plots if p.endswith("gns.png")), None))
            print(f"plots:            {', '.join(plots)}")
            print(f"model card:       {card}")
        print(f"total time:       {time.time() - t0:.1f}s")
        print(f"state written to: {os.path.join(args.output_dir, 'trainer_state.json')}")


if __name__ == "__main__":
    main()
