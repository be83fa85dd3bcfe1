"""Supervised fine-tuning of a pretrained causal LM with LoRA: a SageMaker-style training script.

Run it with its folder as the source dir (train.py imports the finetune_*.py modules beside it):

    aiops example tiny-llm data/tiny-llm
    aiops example finetune-data data/ft
    aiops train train.py --source-dir training/examples/finetune --channel model=data/tiny-llm \\
        --channel train=data/ft/train --channel test=data/ft/test --hp max-steps=20

It needs only torch, transformers, peft and accelerate (no aiops import), so it runs unchanged in
the SageMaker PyTorch or Hugging Face training container, under torchrun (`torch_distributed`) too.

- The model is the `model` channel (SM_CHANNEL_MODEL): a Hugging Face model folder (config.json,
  safetensors weights, tokenizer), checked and loaded with LoRA by finetune_model.py. Nothing is
  fetched from a hub.
- Data: every `*.jsonl` of the train and test channels, one example a line, either a conversation
  `{"messages": [..., {"role": "assistant", ...}]}` (rendered with the tokenizer's chat template)
  or `{"prompt": ..., "completion": ...}` (strings, or message lists as in TRL). The loss is on the
  completion (the last assistant turn) only (finetune_data.py).
- LoRA adapters (peft) on `--lora-target-modules` (default all-linear), trained by the Hugging
  Face Trainer. `--batch-size` is the global batch in sequences, split over processes x
  `--grad-accum`, so a resume at another world size sees the same batches at the same steps.
- Precision: bf16 on a CUDA device that supports it (`--precision auto`), fp32 on CPU.
- Under torchrun on GPUs the model is sharded with FSDP (accelerate's FSDP2, each decoder layer
  wrapped); accelerate shards on GPUs only, so several CPU processes train with DDP.
- Checkpoints: the Trainer's `checkpoint-N/` folders in AIOPS_CHECKPOINT_DIR (/opt/ml/checkpoints,
  which SageMaker syncs to S3), each marked complete once every process has written its part; on
  start the newest complete one is resumed (torn ones are moved aside; finetune_checkpoint.py).
  SIGTERM (a stop or a spot reclaim) saves a checkpoint after the current step and exits 143
  (finetune_callbacks.py).
- `aiops train --secret NAME=ARN` secrets are in the environment as NAME (finetune_secrets.py).
- Metrics are `name=value;` pairs: `step`, `train_loss`, `lr`, `tokens_per_second`, and on the
  test split `test_loss_before`, `test_perplexity_before` (the model as it came) and
  `test_loss_after`, `test_perplexity_after`.
- At the end the adapters (also kept in SM_OUTPUT_DATA_DIR/adapter) are merged into the base
  weights and SM_MODEL_DIR holds a Hugging Face model folder: safetensors, config.json,
  generation_config.json and the channel's tokenizer files as they came (chat template included),
  which `AutoModelForCausalLM.from_pretrained`, TGI and LMI load as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import warnings

STOPPED_EXIT_CODE = 128 + signal.SIGTERM

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")
# transformers' own deprecation notices about its internals (5.x) and a tensor copy it makes (4.57)
warnings.filterwarnings(
    "ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning
)
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
warnings.filterwarnings(
    "ignore", message="mtime may not be reliable", category=UserWarning
)  # checkpoint rotation


SIBLINGS = (
    "finetune_callbacks",
    "finetune_checkpoint",
    "finetune_data",
    "finetune_errors",
    "finetune_model",
    "finetune_secrets",
)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:  # after the warning filters: finetune_callbacks imports transformers
    from finetune_callbacks import CheckpointMark, EvaluateBefore, MetricLines, StopCallback, StopRequest
    from finetune_checkpoint import accept_indexed_cpu_locations, adapt_checkpoint, find_resume_checkpoint
    from finetune_data import Collator, read_examples, tokenize
    from finetune_errors import USAGE_EXIT_CODE, UsageProblem, write_failure
    from finetune_model import check_model_folder, copy_tokenizer_files, decoder_layer_class, load_lora_model
    from finetune_secrets import export_secrets
except ImportError as missing:
    if missing.name not in SIBLINGS:  # a library that is not installed: its own error
        raise
    # shipped alone: SageMaker (and aiops) ship only the entry point without source_dir
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"error: {missing.name}.py is not beside train.py; ship the whole folder with "
            "--source-dir training/examples/finetune (the SDK's source_dir)",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Fine-tune a causal LM with LoRA.")

    def arg(name: str, **kw) -> None:  # both spellings: the toolkit passes names as given
        p.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name.replace("-", "_"), **kw)

    arg("epochs", type=float, default=1.0, help="passes over the train split (unless --max-steps)")
    arg("max-steps", type=int, default=-1, help="optimizer steps in all (-1: --epochs decides)")
    arg(
        "batch-size",
        type=int,
        default=8,
        help="global batch in sequences (processes x grad-accum must divide it)",
    )
    arg("grad-accum", type=int, default=1, help="micro-batches per process per step")
    arg("max-length", type=int, default=512, help="longest sequence in tokens; longer ones are cut")
    arg("lr", type=float, default=2e-4, help="peak learning rate")
    arg("warmup-steps", type=int, default=0)
    arg("weight-decay", type=float, default=0.0)
    arg("lora-r", type=int, default=8)
    arg("lora-alpha", type=float, default=16)
    arg("lora-dropout", type=float, default=0.05)
    arg(
        "lora-target-modules",
        default="all-linear",
        help="comma-separated module names (e.g. q_proj,v_proj) or all-linear",
    )
    arg("eval-samples", type=int, default=200, help="test examples evaluated before and after (0: all)")
    arg("logging-steps", type=int, default=10)
    arg("save-steps", type=int, default=100, help="checkpoint every N steps (and on SIGTERM)")
    arg("save-total-limit", type=int, default=2, help="checkpoints kept")
    arg("gradient-checkpointing", type=_bool, default=False)
    arg(
        "precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 on a CUDA device that supports it, else fp32",
    )
    arg("fsdp", choices=("auto", "off"), default="auto", help="auto: FSDP under torchrun on GPUs")
    arg("seed", type=int, default=0)
    arg("threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    arg("model", default=env("SM_CHANNEL_MODEL", "/opt/ml/input/data/model"))
    arg("train", default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    arg("test", default=env("SM_CHANNEL_TEST", "/opt/ml/input/data/test"))
    arg("model-dir", default=env("SM_MODEL_DIR", "/opt/ml/model"))
    arg("output-data-dir", default=env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    arg("checkpoint-dir", default=env("AIOPS_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    arg("num-gpus", type=int, default=int(env("SM_NUM_GPUS", "0")))
    return p.parse_args(argv)


def _bool(text: str) -> bool:
    if str(text).lower() in ("1", "true", "yes"):
        return True
    if str(text).lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def check_args(args: argparse.Namespace, world: int) -> int:
    """The per-process micro-batch size, or UsageProblem."""
    for name in ("batch_size", "grad_accum", "max_length", "lora_r", "logging_steps", "save_steps"):
        if getattr(args, name) < 1:
            raise UsageProblem(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.save_total_limit < 2:
        raise UsageProblem(
            f"--save-total-limit {args.save_total_limit}: keep at least 2, so a checkpoint torn "
            "by a reclaim always has a complete one before it"
        )
    parts = world * args.grad_accum
    if args.batch_size % parts:
        raise UsageProblem(
            f"--batch-size {args.batch_size} does not split over {world} process(es) x --grad-accum "
            f"{args.grad_accum}; use a batch size that is a multiple of {parts}"
        )
    return args.batch_size // parts


class FineTune:
    def __init__(self, args: argparse.Namespace) -> None:
        """Every check that reads files only, so every rank reaches the same verdict."""
        self.args = args
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.micro = check_args(args, self.world)
        check_model_folder(args.model)
        import torch
        from transformers import AutoConfig, AutoTokenizer

        self.use_cuda = args.num_gpus > 0 and torch.cuda.is_available()
        if args.precision == "bf16" and not (self.use_cuda and torch.cuda.is_bf16_supported()):
            raise UsageProblem(
                "--precision bf16 needs a CUDA device with bf16 support (and SM_NUM_GPUS > 0); "
                "use --precision auto"
            )
        self.bf16 = args.precision != "fp32" and self.use_cuda and torch.cuda.is_bf16_supported()
        self.fsdp = args.fsdp == "auto" and self.world > 1 and self.use_cuda
        try:
            self.config = AutoConfig.from_pretrained(args.model)
        except (ValueError, KeyError, OSError) as err:
            raise UsageProblem(
                f"model channel {args.model}: its config.json does not load here ({str(err).splitlines()[0]})"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        except (ValueError, OSError, TypeError) as err:
            raise UsageProblem(
                f"model channel {args.model}: no tokenizer loads from it ({str(err).splitlines()[0]})"
            ) from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        train = read_examples(args.train, "train")
        test = read_examples(args.test, "test")
        if args.eval_samples > 0:
            test = test[: args.eval_samples]
        self.train_rows = tokenize(train, self.tokenizer, args.max_length, "train")
        self.test_rows = tokenize(test, self.tokenizer, args.max_length, "test")
        self.resume_from = find_resume_checkpoint(args.checkpoint_dir, self.say)
        if self.resume_from:
            adapt_checkpoint(self.resume_from, self.world, self.micro)
            accept_indexed_cpu_locations()
        self.losses: dict[str, float] = {}

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    def load_model(self):
        args = self.args
        return load_lora_model(
            args.model,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            lora_target_modules=args.lora_target_modules,
            bf16=self.bf16,
            fsdp=self.fsdp,
        )

    def training_arguments(self):
        from transformers import TrainingArguments

        args = self.args
        extra = {}
        if args.gradient_checkpointing:  # recompute activations in the backward pass: less memory
            extra.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.fsdp:
            layer = decoder_layer_class(self.config)
            extra.update(
                fsdp="full_shard auto_wrap",
                fsdp_config={
                    "version": 2,
                    "transformer_layer_cls_to_wrap": [layer],
                    "state_dict_type": "FULL_STATE_DICT",
                },
            )
            os.environ.setdefault("FSDP_VERSION", "2")  # transformers 4.x hands it to accelerate this way
        return TrainingArguments(
            output_dir=args.checkpoint_dir,
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            per_device_train_batch_size=self.micro,
            per_device_eval_batch_size=self.micro,
            gradient_accumulation_steps=args.grad_accum,
            learning_rate=args.lr,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            lr_scheduler_type="cosine",
            logging_steps=args.logging_steps,
            save_strategy="steps",
            save_steps=args.save_steps,
            save_total_limit=args.save_total_limit,
            eval_strategy="no",
            bf16=self.bf16,
            use_cpu=not self.use_cuda,
            seed=args.seed,
            data_seed=args.seed,
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
            include_num_input_tokens_seen="non_padding",
            log_level="warning",
            log_level_replica="error",
            **extra,
        )

    def run(self, stop: StopRequest) -> bool:
        """Evaluate, train (resumed if there is a checkpoint), evaluate; True when training ended."""
        import torch
        from transformers import PrinterCallback, Trainer, set_seed

        if self.args.threads:
            torch.set_num_threads(self.args.threads)
        set_seed(self.args.seed)  # the adapters' initial weights (the Trainer seeds only later)
        model = self.load_model()
        trainer = Trainer(
            model=model,
            args=self.training_arguments(),
            train_dataset=self.train_rows,
            eval_dataset=self.test_rows,
            data_collator=Collator(self.tokenizer.pad_token_id),
            processing_class=self.tokenizer,
            callbacks=[EvaluateBefore(self), MetricLines(self.say), CheckpointMark(), StopCallback(stop)],
        )
        trainer.remove_callback(PrinterCallback)  # its dict lines repeat what MetricLines prints
        self.trainer = trainer
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.say(
            f"fine-tuning {type(model.get_base_model()).__name__} from {self.args.model} on "
            f"{trainer.args.device} x {self.world} process(es) ("
            f"{'FSDP' if self.fsdp else 'DDP' if self.world > 1 else 'one process'}), bf16: {self.bf16}; "
            f"LoRA r={self.args.lora_r} on {self.args.lora_target_modules}: {trainable:,} trainable of "
            f"{total:,} parameters; {len(self.train_rows)} train / {len(self.test_rows)} test examples; "
            f"global batch {self.args.batch_size} = {self.world} x {self.args.grad_accum} x {self.micro}"
        )
        if self.resume_from:
            self.say(f"resuming from {self.resume_from}")
        trainer.train(resume_from_checkpoint=self.resume_from)  # EvaluateBefore measures the model as it came
        if stop.requested_anywhere:
            self.say(
                f"SIGTERM received: stopped after step {trainer.state.global_step}; its checkpoint is in "
                f"{self.args.checkpoint_dir}"
            )
            return False
        after = trainer.evaluate()["eval_loss"]
        self.say(f"test_loss_after={after:.6f}; test_perplexity_after={math.exp(min(after, 50)):.4f};")
        self.losses["after"] = after
        return True

    def finish(self) -> None:
        """Save the adapters, then (rank 0) merge them into the base weights and write the model folder."""
        args, trainer = self.args, self.trainer
        adapter_dir = os.path.join(args.output_data_dir, "adapter")
        trainer.save_model(adapter_dir)  # every rank: FSDP gathers the full adapter state for rank 0
        trainer.accelerator.wait_for_everyone()
        if self.rank != 0:
            return
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")  # the channel's own dtype
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
        merged.config.use_cache = True
        os.makedirs(args.model_dir, exist_ok=True)
        merged.save_pretrained(args.model_dir)  # safetensors, config.json, generation_config.json
        copied = copy_tokenizer_files(args.model, args.model_dir)
        steps = trainer.state.global_step
        with open(os.path.join(args.output_data_dir, "metrics.json"), "w") as f:
            json.dump(
                {
                    "test_loss_before": self.losses["before"],
                    "test_loss_after": self.losses["after"],
                    "test_perplexity_before": math.exp(min(self.losses["before"], 50)),
                    "test_perplexity_after": math.exp(min(self.losses["after"], 50)),
                    "steps": steps,
                    "world_size": self.world,
                    "train_examples": len(self.train_rows),
                    "test_examples": len(self.test_rows),
                },
                f,
                indent=2,
            )
        print(
            f"merged the LoRA adapters of {steps} steps into {args.model_dir} "
            f"(tokenizer: {', '.join(copied)}); "
            f"adapters in {adapter_dir}",
            flush=True,
        )


def quiet_libraries(rank: int) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the tokenizer
    from transformers.utils import logging

    logging.set_verbosity_warning() if rank == 0 else logging.set_verbosity_error()
    logging.disable_progress_bar()


def main() -> int:
    args = parse_args()
    rank = int(os.environ.get("RANK", "0"))
    quiet_libraries(rank)
    try:
        secrets = export_secrets()
        if secrets and rank == 0:
            print(f"secrets read: {', '.join(secrets)}", flush=True)
        job = FineTune(args)  # reads files only: every rank reaches the same verdict, no collective
        stop = StopRequest()
        finished = job.run(stop)
    except UsageProblem as problem:
        if rank == 0:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            write_failure(f"UsageError: {problem}")
        return USAGE_EXIT_CODE
    if finished:
        job.finish()
    job.trainer.accelerator.wait_for_everyone()
    return 0 if finished else STOPPED_EXIT_CODE


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        code = record(main)()  # under torchrun, a crashed rank's traceback is named in its summary
    except Exception as error:
        write_failure(f"{type(error).__name__}: {error}")
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)  # as the LM example: gloo's threads can abort interpreter shutdown
    sys.exit(code)
