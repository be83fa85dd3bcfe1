"""Byte-level language model trained with FSDP: a SageMaker-style PyTorch training script.

Run it with its folder as the source dir (train.py imports the lm_*.py modules beside it):

    aiops example lm-data data/lm
    aiops train train.py --source-dir training/examples/lm --nproc 2 \
        --channel train=data/lm/train --channel test=data/lm/test

It needs only torch and numpy (no aiops import), so it runs unchanged in the SageMaker PyTorch
training container under torchrun (`torch_distributed`).

- Under torchrun (WORLD_SIZE > 1) every transformer block and then the whole model are sharded with
  FSDP2 (`torch.distributed.fsdp.fully_shard`, full sharding) on gloo (CPU) or nccl (GPU).
  `--batch-size` is the global batch in sequences, split over processes x `--grad-accum`
  micro-batches, so the same hyperparameters give the same optimisation at any world size.
- Batches are random windows of the token stream drawn from a generator seeded by (seed, step): the
  data position is the step number, whatever the world size.
- Checkpoints (lm_checkpoint.py): torch.distributed.checkpoint (each rank writes its shards) of model,
  optimizer, scheduler, data position and every rank's RNG states, into `step-N.tmp/` under
  AIOPS_CHECKPOINT_DIR, renamed to `step-N/` once every shard and the metadata are on disk. Every
  `--checkpoint-every` steps, at the end, and at the next step after SIGTERM. On start the newest
  complete checkpoint is resumed, at any world size; a torn one is skipped (said in the log).
- bf16 autocast on CUDA devices that support it (`--precision auto`), fp32 on CPU.
- At the end rank 0 writes the consolidated model to SM_MODEL_DIR (lm_output.py): `model.safetensors`
  (or `model.pth` without safetensors), `config.json`, and `code/` (inference.py + lm_model.py).
- Metrics are `name=value;` pairs: `step`, `train_loss`, `lr`, `tokens_per_second`, `test_loss`,
  `test_perplexity`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
import warnings

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIBLINGS = ("lm_checkpoint", "lm_data", "lm_model", "lm_output")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from lm_checkpoint import (
        CheckpointError,
        Checkpoints,
        find_resume_checkpoint,
        resume_notes,
        rng_blob,
        set_rng_blob,
    )
    from lm_data import ChannelError, TokenShards
    from lm_model import ByteLM, ModelConfig, count_parameters
    from lm_output import write_failure, write_metrics, write_model_folder
except ImportError as missing:
    if missing.name not in SIBLINGS:  # a library that is not installed: its own error
        raise
    # shipped alone: SageMaker (and aiops) ship only the entry point without source_dir
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"error: {missing.name}.py is not beside train.py; ship the whole folder with "
            "--source-dir training/examples/lm (the SDK's source_dir)",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(2)

STOPPED_EXIT_CODE = 128 + signal.SIGTERM
USAGE_EXIT_CODE = 2

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")


class UsageProblem(Exception):
    """Bad input found before training: one line, exit 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Train a byte-level transformer LM with FSDP.")

    def arg(name: str, **kw) -> None:  # both spellings: the toolkit passes names as given
        p.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name.replace("-", "_"), **kw)

    arg("steps", type=int, default=200, help="optimizer steps in all")
    arg(
        "batch-size",
        type=int,
        default=16,
        help="global batch in sequences (processes x grad-accum must divide it)",
    )
    arg("grad-accum", type=int, default=1, help="micro-batches per process per step")
    arg("seq-len", type=int, default=128)
    arg("d-model", type=int, default=128)
    arg("n-layers", type=int, default=4)
    arg("n-heads", type=int, default=4)
    arg("dropout", type=float, default=0.0)
    arg("lr", type=float, default=3e-3, help="peak learning rate")
    arg("min-lr-ratio", type=float, default=0.1, help="the cosine ends at lr x this")
    arg("warmup-steps", type=int, default=20, help="linear warm-up, then cosine decay")
    arg("weight-decay", type=float, default=0.1)
    arg("grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    arg("eval-every", type=int, default=25, help="test loss every N steps (as log-every: one line per step)")
    arg("eval-batches", type=int, default=4, help="test batches of batch-size windows")
    arg("log-every", type=int, default=25)
    arg("checkpoint-every", type=int, default=50)
    arg("keep-checkpoints", type=int, default=2)
    arg(
        "precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 autocast on a CUDA device that supports it, else fp32",
    )
    arg("seed", type=int, default=0)
    arg("threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    arg("model-dir", default=env("SM_MODEL_DIR", "/opt/ml/model"))
    arg("train", default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    arg("test", default=env("SM_CHANNEL_TEST", "/opt/ml/input/data/test"))
    arg("output-data-dir", default=env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    arg("checkpoint-dir", default=env("AIOPS_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    arg("num-gpus", type=int, default=int(env("SM_NUM_GPUS", "0")))
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> ModelConfig:
    try:
        return ModelConfig(
            seq_len=args.seq_len,
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            dropout=args.dropout,
        )
    except ValueError as err:
        raise UsageProblem(f"{err}; choose --d-model a multiple of --n-heads") from None


def check_args(args: argparse.Namespace, world: int) -> int:
    """The per-process micro-batch size, or UsageProblem."""
    for name in (
        "steps",
        "batch_size",
        "grad_accum",
        "seq_len",
        "eval_every",
        "eval_batches",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        if getattr(args, name) < 1:
            raise UsageProblem(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    parts = world * args.grad_accum
    if args.batch_size % parts:
        raise UsageProblem(
            f"--batch-size {args.batch_size} does not split over {world} process(es) x --grad-accum "
            f"{args.grad_accum}; use a batch size that is a multiple of {parts}"
        )
    return args.batch_size // parts


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.cfg = model_config(args)
        self.final_test_loss = math.nan  # the last evaluation's, set before finish()
        self.micro = check_args(args, self.world)
        try:
            self.train_data = TokenShards(args.train)
            self.test_data = TokenShards(args.test)
        except ChannelError as err:
            raise UsageProblem(str(err)) from None
        for name, data in (("train", self.train_data), ("test", self.test_data)):
            if data.vocab_size != self.cfg.vocab_size:
                raise UsageProblem(
                    f"channel {name}: vocabulary {data.vocab_size}, the model's is "
                    f"{self.cfg.vocab_size}; write it with `aiops example lm-data`"
                )
            if len(data) <= self.cfg.seq_len + 1:
                raise UsageProblem(
                    f"channel {name} has {len(data)} tokens, fewer than --seq-len "
                    f"{self.cfg.seq_len} + 1; write more data or lower --seq-len"
                )
        if args.precision == "bf16" and not (
            args.num_gpus > 0 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        ):
            raise UsageProblem(
                "--precision bf16 needs a CUDA device with bf16 support (and SM_NUM_GPUS > 0); "
                "use --precision auto"
            )
        try:
            self.resume_from = find_resume_checkpoint(args.checkpoint_dir, self.cfg.to_dict(), self.say)
        except CheckpointError as err:
            raise UsageProblem(str(err)) from None

    def say(self, text: str) -> None:
        if self.rank == 0:
            print(text, flush=True)

    # --- set-up (after every file check passed on every rank) ---

    def setup(self) -> None:
        args = self.args
        use_cuda = args.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1:
            dist.init_process_group("nccl" if use_cuda else "gloo")
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        random.seed(args.seed)
        # bit-exact resumes on CPU; on CUDA some kernels (attention backward) have no deterministic
        # variant, so there it only warns
        torch.use_deterministic_algorithms(True, warn_only=use_cuda)
        torch.backends.cudnn.benchmark = False
        self.autocast = args.precision != "fp32" and use_cuda and torch.cuda.is_bf16_supported()

        net = ByteLM(self.cfg).to(self.device)  # the same seed: the same initial weights on every rank
        if self.world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for block in net.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(net, mesh=mesh)
        self.model = net
        decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in net.named_parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.lr,
            betas=(0.9, 0.95),
            foreach=False,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_factor)
        self.step = 0
        self.tokens_seen = 0
        self.saved_step = -1
        self.checkpoints = Checkpoints(
            args.checkpoint_dir, args.keep_checkpoints, self.rank, self.world, self.say
        )

    def lr_factor(self, step: int) -> float:
        args = self.args
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = min(1.0, (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps))
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    # --- checkpoints ---

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.opt)
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.sched.state_dict(),
            "data": {"step": torch.tensor(self.step), "tokens_seen": torch.tensor(self.tokens_seen)},
            "rng": {f"rank{self.rank}": rng_blob()},
        }

    def save_checkpoint(self) -> None:
        if self.saved_step == self.step:  # resumed at this very step, or saved it already
            return
        meta = {
            "step": self.step,
            "world_size": self.world,
            "model": self.cfg.to_dict(),
            "batch_size": self.args.batch_size,
            "seed": self.args.seed,
        }
        self.checkpoints.save(self.step, self._state, meta)
        self.saved_step = self.step

    def load_checkpoint(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        began = time.monotonic()
        state = self._state()
        saved = self.checkpoints.load(path, state)
        set_state_dict(
            self.model, self.opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )
        self.sched.load_state_dict(state["scheduler"])
        self.step = int(state["data"]["step"])
        self.tokens_seen = int(state["data"]["tokens_seen"])
        self.saved_step = self.step
        if "rng" in state:
            set_rng_blob(state["rng"][f"rank{self.rank}"])
        data_order = {"batch_size": self.args.batch_size, "seed": self.args.seed}
        for note in resume_notes(saved, data_order, self.world):
            self.say(note)
        self.say(
            f"resuming from {path}: step {self.step} of {self.args.steps} "
            f"(loaded in {time.monotonic() - began:.2f}s)"
        )

    # --- training ---

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def batch_offsets(self, step: int, count: int, data: TokenShards) -> np.ndarray:
        rng = np.random.default_rng([self.args.seed, step])
        return rng.integers(0, len(data) - self.cfg.seq_len - 1, size=count)

    def tensors(self, data: TokenShards, offsets) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([data.read(int(o), self.cfg.seq_len + 1) for o in offsets])
        t = torch.from_numpy(rows).to(self.device)
        return t[:, :-1], t[:, 1:]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    def all_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        n = self.args.eval_batches * self.args.batch_size
        offsets = np.linspace(0, len(self.test_data) - self.cfg.seq_len - 1, n).astype(np.int64)
        per_rank = self.args.batch_size // self.world
        total = 0.0
        for b in range(self.args.eval_batches):
            start = b * self.args.batch_size + self.rank * per_rank
            x, y = self.tensors(self.test_data, offsets[start : start + per_rank])
            total += self.loss(x, y).item() * per_rank
        self.model.train()
        loss_sum, count = self.all_sum([total, per_rank * self.args.eval_batches])
        return loss_sum / count

    def train_step(self) -> float:
        args = self.args
        offsets = self.batch_offsets(self.step, args.batch_size, self.train_data)
        mine = offsets[
            self.rank * self.micro * args.grad_accum : (self.rank + 1) * self.micro * args.grad_accum
        ]
        loss_total = 0.0
        for k in range(args.grad_accum):
            if self.world > 1:  # reduce-scatter the gradients once, after the last micro-batch
                self.model.set_requires_gradient_sync(k == args.grad_accum - 1)
            x, y = self.tensors(self.train_data, mine[k * self.micro : (k + 1) * self.micro])
            loss = self.loss(x, y) / args.grad_accum
            loss.backward()
            loss_total += loss.item()
            fail_here(self.rank, self.step)
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += args.batch_size * self.cfg.seq_len
        return loss_total

    def run(self, stop: StopRequest) -> bool:
        """Train to the end (True) or until a stop request (False, after its checkpoint)."""
        args = self.args
        if self.resume_from:
            self.load_checkpoint(self.resume_from)
        self.say(
            f"training on {self.device} x {self.world} process(es) (FSDP: {self.world > 1}), "
            f"{torch.get_num_threads()} thread(s) each, bf16 autocast: {self.autocast}; "
            f"{count_parameters(self.model):,} parameters, {len(self.train_data):,} train / "
            f"{len(self.test_data):,} test tokens; steps {self.step + 1}..{args.steps}, global batch "
            f"{args.batch_size} x {self.cfg.seq_len} tokens = {self.world} x {args.grad_accum} x {self.micro}"
        )
        window_loss, window_steps, window_began = 0.0, 0, time.monotonic()
        paused = 0.0  # seconds of evaluation and checkpoints in the window: not training throughput
        while self.step < args.steps:
            window_loss += self.train_step()
            window_steps += 1
            # one line per step with every figure of that step, so `step` pairs with each curve
            line = []
            if self.step % args.log_every == 0 or self.step == args.steps:
                (loss_sum,) = self.all_sum([window_loss])
                now = time.monotonic()
                tokens = window_steps * args.batch_size * self.cfg.seq_len
                line += [
                    f"train_loss={loss_sum / self.world / window_steps:.6f};",
                    f"lr={self.sched.get_last_lr()[0]:.6g};",
                    f"tokens_per_second={tokens / max(now - window_began - paused, 1e-9):.1f};",
                ]
                window_loss, window_steps, window_began, paused = 0.0, 0, now, 0.0
            began = time.monotonic()
            if self.step % args.eval_every == 0 or self.step == args.steps:
                test_loss = self.evaluate()
                line += [
                    f"test_loss={test_loss:.6f};",
                    f"test_perplexity={math.exp(min(test_loss, 50)):.4f};",
                ]
            if line:
                self.say(" ".join([f"step={self.step};", *line]))
            if self.step % args.checkpoint_every == 0 or self.step == args.steps:
                self.save_checkpoint()
            paused += time.monotonic() - began
            if stop.agreed(self.world, self.device) and self.step < args.steps:
                self.save_checkpoint()
                self.say(
                    f"SIGTERM received: stopped after step {self.step}; its checkpoint is in "
                    f"{args.checkpoint_dir}"
                )
                return False
        return True

    def finish(self) -> None:
        """Consolidate the sharded model on rank 0 and write the servable model folder."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.rank != 0:
            return
        args = self.args
        tensors = {k: v.detach().cpu().contiguous() for k, v in full.items()}
        weights = write_model_folder(args.model_dir, tensors, self.cfg.to_dict(), self.step)
        test_loss = self.final_test_loss
        metrics = {
            "test_loss": test_loss,
            "test_perplexity": math.exp(min(test_loss, 50)),
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "world_size": self.world,
            "model": self.cfg.to_dict(),
            "parameters": sum(t.numel() for t in tensors.values()),
        }
        write_metrics(args.output_data_dir, metrics)
        print(
            f"saved {weights}, config.json and code/ to {args.model_dir}; test loss {test_loss:.4f}",
            flush=True,
        )


def fail_here(rank: int, step: int) -> None:
    """Fault injection for the tests: AIOPS_LM_FAIL_AT=RANK:STEP raises on that rank at that step."""
    spec = os.environ.get("AIOPS_LM_FAIL_AT")
    if spec and spec == f"{rank}:{step}":
        raise RuntimeError(f"injected failure on rank {rank} at step {step} (AIOPS_LM_FAIL_AT)")


class StopRequest:
    """SIGTERM (how SageMaker and `aiops train` stop a job) sets a flag; the ranks agree on it after
    each step and stop together after a checkpoint, so no shard is left half-written.

    A rank whose peer died does not wait for the flag: gloo raises "Connection closed by peer" at its
    next collective, and torchrun SIGKILLs a worker still running 30 s after its SIGTERM."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, world: int, device: torch.device) -> bool:
        if world == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def main() -> int:
    args = parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        trainer = Trainer(args)  # reads files only: every rank reaches the same verdict, no collective
    except UsageProblem as problem:
        if rank == 0:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            write_failure(f"UsageError: {problem}")
        return USAGE_EXIT_CODE
    stop = StopRequest()
    trainer.setup()
    finished = trainer.run(stop)
    if finished:
        trainer.final_test_loss = trainer.evaluate()
        trainer.say(
            f"final_test_loss={trainer.final_test_loss:.6f}; "
            f"final_test_perplexity={math.exp(min(trainer.final_test_loss, 50)):.4f};"
        )
        trainer.finish()
    trainer.barrier()
    if world > 1:
        dist.destroy_process_group()
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
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # gloo's threads can abort interpreter shutdown (torch 2.13), as in the digits example: every
        # file is written and the group is gone, so a distributed rank leaves without teardown.
        os._exit(code)
    sys.exit(code)
