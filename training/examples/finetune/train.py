"""Supervised fine-tuning of a pretrained causal LM with LoRA: a SageMaker-style training script.

    aiops example tiny-llm data/tiny-llm
    aiops example finetune-data data/ft
    aiops train training/examples/finetune/train.py --channel model=data/tiny-llm \\
        --channel train=data/ft/train --channel test=data/ft/test --hp max-steps=20

It needs only torch, transformers, peft and accelerate (no aiops import), so it runs unchanged in
the SageMaker PyTorch or Hugging Face training container, under torchrun (`torch_distributed`) too.

- The model is the `model` channel (SM_CHANNEL_MODEL): a Hugging Face model folder (config.json,
  safetensors weights, tokenizer). Nothing is fetched from a hub.
- Data: every `*.jsonl` of the train and test channels, one example a line, either a conversation
  `{"messages": [..., {"role": "assistant", ...}]}` (rendered with the tokenizer's chat template)
  or `{"prompt": ..., "completion": ...}` (strings, or message lists as in TRL). The loss is on the
  completion (the last assistant turn) only.
- LoRA adapters (peft) on `--lora-target-modules` (default all-linear), trained by the Hugging
  Face Trainer. `--batch-size` is the global batch in sequences, split over processes x
  `--grad-accum`, so a resume at another world size sees the same batches at the same steps.
- Precision: bf16 on a CUDA device that supports it (`--precision auto`), fp32 on CPU.
- Under torchrun on GPUs the model is sharded with FSDP (accelerate's FSDP2, each decoder layer
  wrapped); accelerate shards on GPUs only, so several CPU processes train with DDP.
- Checkpoints: the Trainer's `checkpoint-N/` folders in AIOPS_CHECKPOINT_DIR (/opt/ml/checkpoints,
  which SageMaker syncs to S3), each marked complete once every process has written its part; on
  start the newest complete one is resumed (torn ones are moved aside). SIGTERM (a stop or a spot
  reclaim) saves a checkpoint after the current step and exits 143.
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
import glob
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import warnings

STOPPED_EXIT_CODE = 128 + signal.SIGTERM
USAGE_EXIT_CODE = 2
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "aiops-complete"
IGNORE_INDEX = -100  # labels the loss skips (the prompt, the padding)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# what a tokenizer is made of; the output gets the channel's own files, byte for byte
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")
# transformers' own deprecation notices about its internals (5.x) and a tensor copy it makes (4.57)
warnings.filterwarnings(
    "ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning
)
warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
warnings.filterwarnings(
    "ignore", message="mtime may not be reliable", category=UserWarning
)  # checkpoint rotation


class UsageProblem(Exception):
    """Bad input found before training: one line, exit 2."""


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


# ---------------------------------------------------------------------------------------------
# Inputs: the model folder and the data


def check_model_folder(path: str) -> None:
    """The model channel must be a Hugging Face model folder (what `save_pretrained` writes)."""
    if not os.path.isdir(path):
        raise UsageProblem(
            f"no model channel at {path}: pass the model folder as a channel, "
            "e.g. aiops train ... --channel model=./my-model"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageProblem(
            f"model channel {path} has no config.json: it is not a Hugging Face model folder "
            "(write one with save_pretrained, or aiops example tiny-llm)"
        )
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_FILES):
        raise UsageProblem(f"model channel {path} has no weights (*.safetensors or *.bin)")


def read_examples(folder: str, channel: str) -> list[dict]:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.jsonl"), recursive=True))
    if not files:
        raise UsageProblem(
            f"channel {channel} ({folder}) has no .jsonl file; write the channels with "
            "`aiops example finetune-data OUT`"
        )
    examples = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"channel {channel}: {os.path.relpath(file, folder)} line {number}"
                try:
                    item = json.loads(line)
                except ValueError as err:
                    raise UsageProblem(f"{where} is not JSON ({err})") from None
                examples.append(split_example(item, where))
    if not examples:
        raise UsageProblem(f"channel {channel} ({folder}) has no examples")
    return examples


def split_example(item: object, where: str) -> dict:
    """{"prompt": str | messages, "completion": str | messages} from either accepted format."""
    if isinstance(item, dict) and isinstance(item.get("messages"), list):
        messages = item["messages"]
        if (
            len(messages) < 2
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
            or messages[-1]["role"] != "assistant"
        ):
            raise UsageProblem(
                f'{where}: "messages" must be a list of {{role, content}} ending with the assistant\'s answer'
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    if isinstance(item, dict) and "prompt" in item and "completion" in item:
        prompt, completion = item["prompt"], item["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            return {"prompt": prompt, "completion": completion}
        if isinstance(prompt, list) and isinstance(completion, list):
            return {"prompt": prompt, "completion": completion}
        raise UsageProblem(f'{where}: "prompt" and "completion" must both be strings or both message lists')
    raise UsageProblem(f'{where}: expected {{"messages": [...]}} or {{"prompt": ..., "completion": ...}}')


def tokenize(examples: list[dict], tokenizer, max_length: int, channel: str) -> list[dict]:
    """input_ids and labels (the prompt's positions IGNORE_INDEX) of each example that keeps at
    least one completion token within max_length."""
    rows, dropped = [], 0
    for example in examples:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            if not tokenizer.chat_template:
                raise UsageProblem(
                    f"channel {channel} holds conversations but the model's tokenizer has no chat "
                    "template; add one to tokenizer_config.json, or use prompt/completion strings"
                )
            prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise UsageProblem(
                    "the chat template renders the conversation without its prompt as a prefix; "
                    "use prompt/completion strings with this model"
                )
            completion_text = full_text[len(prompt_text) :]
        else:
            prompt_text, completion_text = prompt, completion + (tokenizer.eos_token or "")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + completion_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        rows.append({"input_ids": ids, "labels": labels})
    if not rows:
        raise UsageProblem(
            f"channel {channel}: no example keeps a completion token within --max-length "
            f"{max_length}; raise --max-length"
        )
    if dropped and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"note: channel {channel}: {dropped} example(s) longer than --max-length {max_length} in their "
            "prompt alone are left out",
            flush=True,
        )
    return rows


class Collator:
    """Right-pads a batch: pad token, attention mask 0, labels IGNORE_INDEX."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_targets(model, spec: str) -> str | list[str]:
    """`all-linear` or the named modules, each of which must exist in the model (UsageProblem)."""
    if spec.strip() == "all-linear":
        return "all-linear"
    import torch

    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    if not wanted:
        raise UsageProblem(
            "--lora-target-modules is empty; name modules (e.g. q_proj,v_proj) or use all-linear"
        )
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [name for name in wanted if name not in names]
    if missing:
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
        raise UsageProblem(
            f"--lora-target-modules: {', '.join(missing)} not in {type(model).__name__}; its "
            f"linear layers are {', '.join(linear)} (or use all-linear)"
        )
    return wanted


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_steps(folder: str) -> list[tuple[int, str]]:
    if not os.path.isdir(folder):
        return []
    return sorted(
        ((int(m.group(1)), name) for name in os.listdir(folder) if (m := CHECKPOINT_DIR.match(name))),
        reverse=True,
    )


def find_resume_checkpoint(folder: str, say) -> str | None:
    """The newest complete checkpoint; torn ones (a process stopped mid-save) are moved aside by the
    first process of each host, so the Trainer never rotates a complete one out in their favour."""
    chosen = None
    for _, name in checkpoint_steps(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, COMPLETE_MARK)):
            chosen = chosen or path
            continue
        if chosen is None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            aside = os.path.join(folder, f"incomplete-{name}-{int(time.time())}")
            try:
                os.rename(path, aside)
                say(f"checkpoint {name} is incomplete; moved aside to {os.path.basename(aside)}")
            except FileNotFoundError:
                pass
    return chosen


def accept_indexed_cpu_locations() -> None:
    """transformers 4 loads a multi-process CPU run's optimizer state with map_location
    ``cpu:<local rank>``, a location torch.load does not know: every ``cpu:N`` is the CPU."""
    import torch

    def restore(storage, location: str):
        return storage if re.fullmatch(r"cpu:\d+", location) else None

    # a priority of its own (the registry sorts by it, and ties compare the functions)
    torch.serialization.register_package(100, lambda storage: None, restore)


def adapt_checkpoint(checkpoint: str, world: int, micro_batch: int) -> None:
    """Resuming at another world size (the global batch is the same, the per-process one is not).
    The first process of each host, before any process reads the checkpoint, gives it
    - every missing rank's RNG file, a copy of rank 0's (the one the sample order follows): the
      Trainer restores `rng_state.pth` alone and `rng_state_<rank>.pth` under torchrun, and skips
      the restore when its file is missing;
    - the per-process batch in trainer_state.json: transformers 4 trains on with the checkpoint's,
      which would change the batches and the step count."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    single = os.path.join(checkpoint, "rng_state.pth")
    first = single if os.path.isfile(single) else os.path.join(checkpoint, "rng_state_0.pth")
    if os.path.isfile(first):
        wanted = (
            [single] if world == 1 else [os.path.join(checkpoint, f"rng_state_{r}.pth") for r in range(world)]
        )
        for path in wanted:
            if not os.path.isfile(path):
                shutil.copyfile(first, path)
    state_file = os.path.join(checkpoint, "trainer_state.json")
    with open(state_file) as f:
        state = json.load(f)
    if state.get("train_batch_size") not in (None, micro_batch):
        state["train_batch_size"] = micro_batch
        with open(f"{state_file}.tmp", "w") as f:
            json.dump(state, f, indent=2)
        os.replace(f"{state_file}.tmp", state_file)


# ---------------------------------------------------------------------------------------------
# The fine-tune


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
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        # FSDP shards flat parameters of one dtype: fp32 weights, bf16 compute (its mixed precision)
        dtype = torch.bfloat16 if self.bf16 and not self.fsdp else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.args.model, dtype=dtype)
        model.config.use_cache = False  # no KV cache while training
        targets = lora_targets(model, self.args.lora_target_modules)
        config = LoraConfig(
            r=self.args.lora_r,
            lora_alpha=self.args.lora_alpha,
            lora_dropout=self.args.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as err:
            raise UsageProblem(
                f"--lora-target-modules {self.args.lora_target_modules}: {str(err).splitlines()[0]}"
            ) from None
        if self.fsdp:
            for param in model.parameters():  # the adapters too: one dtype per sharded group
                param.data = param.data.to(torch.float32)
        return model

    def training_arguments(self):
        from transformers import TrainingArguments

        args = self.args
        extra = {}
        if args.gradient_checkpointing:  # recompute activations in the backward pass: less memory
            extra.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.fsdp:
            layer = _decoder_layer_class(self.config)
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


def copy_tokenizer_files(source: str, dest: str) -> list[str]:
    """The channel's tokenizer files, unchanged: fine-tuning does not change the tokenizer, and a
    re-save by this transformers could name classes that the serving image's version lacks."""
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))
            copied.append(name)
    return copied


def _decoder_layer_class(config) -> str:
    """The decoder layer class FSDP wraps one by one (transformers' `_no_split_modules`)."""
    from transformers import AutoModelForCausalLM

    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    names = getattr(model_class, "_no_split_modules", None) or []
    if not names:
        raise UsageProblem(
            f"{model_class.__name__} names no decoder layer (_no_split_modules) to shard with "
            "FSDP; run it with --fsdp off"
        )
    return names[0]


# ---------------------------------------------------------------------------------------------
# Trainer callbacks


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class MetricLines(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """The Trainer's logs as one `name=value;` line per logging step (rank 0)."""

    def __init__(self, say) -> None:
        self.say = say
        self.last = (time.monotonic(), 0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        now, tokens = time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0)
        rate = (tokens - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, tokens)
        parts = [f"step={state.global_step};", f"train_loss={logs['loss']:.6f};"]
        if "learning_rate" in logs:
            parts.append(f"lr={logs['learning_rate']:.6g};")
        if "grad_norm" in logs:
            parts.append(f"grad_norm={float(logs['grad_norm']):.4f};")
        parts.append(f"tokens_per_second={rate:.1f};")
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            parts.append(f"peak_gpu_memory_gib={torch.cuda.max_memory_allocated() / 2**30:.3f};")
        self.say(" ".join(parts))

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.monotonic(), int(getattr(state, "num_input_tokens_seen", 0) or 0))


class EvaluateBefore(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """The test loss of the model as it came, with the adapters switched off (so a resumed run
    measures the base model too). Measured once training is set up: a `Trainer.evaluate()` before
    `train()` leaves the model marked prepared, and accelerate then skips its DDP wrapper, so the
    processes would train apart without a word (accelerate 1.16)."""

    def __init__(self, job: FineTune) -> None:
        self.job = job

    def on_train_begin(self, args, state, control, **kwargs):
        job = self.job
        with job.trainer.model.disable_adapter():
            before = job.trainer.evaluate()["eval_loss"]
        job.losses["before"] = before
        job.say(f"test_loss_before={before:.6f}; test_perplexity_before={math.exp(min(before, 50)):.4f};")


class CheckpointMark(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    """Marks a checkpoint complete once every process has written its part of it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_local_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(path):
                with open(os.path.join(path, COMPLETE_MARK), "w") as f:
                    f.write(f"{state.global_step}\n")
                    f.flush()
                    os.fsync(f.fileno())


class StopRequest:
    """SIGTERM (how SageMaker and `aiops train` stop a job) sets a flag; the processes agree on it
    after each step and stop together after a checkpoint."""

    def __init__(self) -> None:
        import threading

        self.requested = False
        self.requested_anywhere = False
        self.arrived = threading.Event()
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.arrived.set()


class StopCallback(_trainer_callback_base()):  # type: ignore[misc]  # a lazily imported base
    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        import torch.distributed as dist

        pause_at = os.environ.get("AIOPS_FINETUNE_PAUSE_AT")  # for the tests: hold rank 0 after that step
        if pause_at and int(pause_at) == state.global_step and int(os.environ.get("RANK", "0")) == 0:
            print(
                f"paused after step {state.global_step} (AIOPS_FINETUNE_PAUSE_AT): waiting for SIGTERM",
                flush=True,
            )
            while not self.stop.requested:  # the other ranks wait in the all_reduce below
                self.stop.arrived.wait(0.1)
        flag = self.stop.requested
        if dist.is_available() and dist.is_initialized():
            device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
            value = torch.tensor([float(flag)], device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            flag = bool(value.item())
        if flag and state.global_step < state.max_steps:
            self.stop.requested_anywhere = True
            control.should_save = True
            control.should_training_stop = True
        return control


def write_failure(text: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason (1024 characters at most).
    The first rank to fail writes it: the root cause, not a peer's later "connection closed"."""
    path = os.path.join(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"), "failure")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "x") as f:
            f.write(text[:1024])
    except OSError:
        pass


SECRET_ARN_PREFIX = "AIOPS_SECRET_ARN_"  # `aiops train --secret NAME=ARN` sets AIOPS_SECRET_ARN_NAME=ARN


def read_secret(name: str) -> str | None:
    """The value of secret NAME, the same way locally and on SageMaker: NAME in the environment (a
    local run: your own shell's), else AWS Secrets Manager at the ARN `--secret NAME=ARN` passed, read
    with the job's role (or locally your credentials). None when neither is there."""
    if os.environ.get(name):
        return os.environ[name]
    arn = os.environ.get(SECRET_ARN_PREFIX + name)
    if not arn:
        return None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = boto3.client("secretsmanager", region_name=arn.split(":")[3]).get_secret_value(SecretId=arn)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        raise UsageProblem(
            f"secret {name}: secretsmanager:GetSecretValue on {arn} failed ({code}); the job's role "
            "needs it (access.trainingSecrets in the stack config)"
        ) from None
    except BotoCoreError as err:
        raise UsageProblem(f"secret {name}: cannot reach Secrets Manager for {arn} ({err})") from None
    return answer.get("SecretString") or answer["SecretBinary"].decode()


def export_secrets() -> list[str]:
    """Every `--secret` into this process's environment by its name, where libraries look for it
    (HF_TOKEN for huggingface_hub, WANDB_API_KEY for wandb); never printed, never in argv."""
    names = sorted(key[len(SECRET_ARN_PREFIX) :] for key in os.environ if key.startswith(SECRET_ARN_PREFIX))
    for name in names:
        os.environ[name] = read_secret(name) or ""
    return names


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
