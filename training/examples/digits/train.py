"""Digits CNN: a SageMaker-style PyTorch training script.

It runs unchanged in the SageMaker PyTorch training container and under `aiops train`, so it needs
nothing but torch and numpy (no aiops import). It reads the SageMaker environment (SM_MODEL_DIR,
SM_CHANNEL_TRAIN, SM_CHANNEL_TEST, SM_OUTPUT_DATA_DIR, SM_OUTPUT_DIR, SM_NUM_GPUS) and takes its
hyperparameters as `--key value` arguments, as the SageMaker training toolkit passes them.

- Checkpoints after every epoch into AIOPS_CHECKPOINT_DIR (default /opt/ml/checkpoints, the folder
  SageMaker syncs to S3 for spot training) and resumes from the checkpoint there.
- Stopped with SIGTERM and started again, it ends with the same weights, bit for bit on CPU, as an
  uninterrupted run with the same seed: data order comes from a generator seeded by (seed, epoch),
  and the checkpoint restores model, optimizer and every RNG state.
- Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (gloo on CPU, nccl on GPU);
  `--batch-size` is the global batch, split across processes. Only rank 0 writes files.
- Metrics are printed as `name=value;` pairs; `model.pth` (state_dict) and a TorchScript `model.pt`
  (what the SageMaker PyTorch serving container loads) go to the model folder.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import random
import signal
import sys
import time
import traceback

# cuBLAS is only deterministic with a fixed workspace; it must be set before CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

NUM_CLASSES = 10
CHECKPOINT_FILE = "checkpoint.pt"
# A stopped job exits the way a process killed by SIGTERM reports it to a shell.
STOPPED_EXIT_CODE = 128 + signal.SIGTERM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Train a small CNN on the 8x8 digits.")
    # Both spellings: the toolkit passes a hyperparameter's name as given (`batch-size` or `batch_size`).
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=64,
        help="global batch size, split across processes",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)"
    )
    p.add_argument(
        "--model-dir", "--model_dir", dest="model_dir", default=env("SM_MODEL_DIR", "/opt/ml/model")
    )
    p.add_argument("--train", default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    p.add_argument("--test", default=env("SM_CHANNEL_TEST", "/opt/ml/input/data/test"))
    p.add_argument(
        "--output-data-dir",
        "--output_data_dir",
        dest="output_data_dir",
        default=env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"),
    )
    p.add_argument(
        "--checkpoint-dir",
        "--checkpoint_dir",
        dest="checkpoint_dir",
        default=env("AIOPS_CHECKPOINT_DIR", "/opt/ml/checkpoints"),
    )
    p.add_argument(
        "--num-gpus", "--num_gpus", dest="num_gpus", type=int, default=int(env("SM_NUM_GPUS", "0"))
    )
    return p.parse_args(argv)


class DigitsCNN(nn.Module):
    """Takes rows of 64 pixels (or 1x8x8 images) and returns logits over the 10 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            # a strided conv rather than max-pooling: it has a deterministic CUDA backward as well
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)))


class StopRequest:
    """SIGTERM (how SageMaker and `aiops train` stop a job) only sets a flag; the loop stops after the
    epoch's checkpoint is written, so no file is ever left half-written."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, world: int, device: torch.device) -> bool:
        """True when any process was asked to stop, so all ranks leave at the same epoch."""
        if world == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def load_channel(folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted(glob.glob(os.path.join(folder, "*.npz")))
    if not files:
        raise FileNotFoundError(
            f"no .npz file in channel folder {folder}; write the channels with "
            "`aiops example digits-data OUT`"
        )
    parts = [np.load(f) for f in files]
    x = torch.from_numpy(np.concatenate([p["x"] for p in parts])).float()
    y = torch.from_numpy(np.concatenate([p["y"] for p in parts])).long()
    if x.ndim != 2 or x.shape[1] != 64 or len(x) != len(y):
        raise ValueError(
            f"{folder}: expected x [N, 64] and y [N], got x {list(x.shape)} and y {list(y.shape)}"
        )
    if len(y) and not (0 <= int(y.min()) and int(y.max()) < NUM_CLASSES):
        raise ValueError(
            f"{folder}: labels must be 0..{NUM_CLASSES - 1}, found {int(y.min())}..{int(y.max())}"
        )
    return x, y


def epoch_indices(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for the epoch: a function of (seed, epoch) alone, so a resumed run
    sees the same batches. The order is padded so every rank runs the same number of steps."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    order = torch.randperm(n, generator=g)
    order = torch.cat([order, order[: (-n) % world]])
    return order[rank::world]


def shift_augment(x: torch.Tensor, share: float = 0.3) -> torch.Tensor:
    """Move a random `share` of the images by up to one pixel each way. With only ~1,400 training
    images the CNN overfits otherwise (measured: ~97 % -> ~99 % test accuracy); shifting every image
    underfits. Draws from torch's RNG, which the checkpoint restores."""
    n = len(x)
    padded = F.pad(x.reshape(n, 8, 8), (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, n, 1), device=x.device)
    unmoved = torch.rand(n, 1, device=x.device) >= share
    dy, dx = dy.masked_fill(unmoved, 1), dx.masked_fill(unmoved, 1)  # offset 1 in the padded image = no shift
    rows = (dy + torch.arange(8, device=x.device))[:, :, None]
    cols = (dx + torch.arange(8, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


def set_lr(opt: torch.optim.Optimizer, peak: float, progress: float) -> None:
    """Cosine decay from `peak` to 0 over the run. A function of the step alone, so there is no
    scheduler state to checkpoint."""
    for group in opt.param_groups:
        group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * progress))


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_atomic(obj, path: str) -> None:
    """Write to a temporary file and rename it over the target: a reader (or a resumed run after a
    kill) sees the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str, net: nn.Module, opt: torch.optim.Optimizer, args: argparse.Namespace) -> int:
    """Restore the latest checkpoint if there is one; return the number of epochs already done."""
    if not os.path.exists(path):
        return 0
    # Our own file, and the numpy/python RNG states are not plain tensors, hence weights_only=False.
    # Loaded on CPU: RNG states must stay there; load_state_dict moves tensors to the model's device.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_states(ckpt["rng"])
    changed = {k: (v, getattr(args, k)) for k, v in ckpt["hyperparameters"].items() if getattr(args, k) != v}
    if changed:
        print(
            f"note: hyperparameters differ from the checkpoint's (was, now): {changed}; "
            "the result will not match an uninterrupted run",
            flush=True,
        )
    print(f"resuming from {path}: {ckpt['epoch']} of {args.epochs} epochs done", flush=True)
    return ckpt["epoch"]


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    net.eval()
    logits = net(x)
    pred = logits.argmax(1)
    confusion = torch.bincount(y * NUM_CLASSES + pred, minlength=NUM_CLASSES**2)
    confusion = confusion.reshape(NUM_CLASSES, NUM_CLASSES)
    return F.cross_entropy(logits, y).item(), (pred == y).float().mean().item(), confusion.cpu()


def per_class(confusion: torch.Tensor) -> dict[str, float]:
    tp = confusion.diag().double()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    figures = {}
    for c in range(NUM_CLASSES):
        figures.update(
            {
                f"class_{c}_precision": precision[c].item(),
                f"class_{c}_recall": recall[c].item(),
                f"class_{c}_f1": f1[c].item(),
            }
        )
    figures["macro_f1"] = f1.mean().item()
    return figures


def metric_line(**values: float) -> str:
    return " ".join(f"{k}={v:.4f};" if isinstance(v, float) else f"{k}={v};" for k, v in values.items())


def train(args: argparse.Namespace) -> None:
    stop = StopRequest()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = args.num_gpus > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False

    x_train, y_train = (t.to(device) for t in load_channel(args.train))
    x_test, y_test = (t.to(device) for t in load_channel(args.test))
    net = DigitsCNN().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckpt_path = os.path.join(args.checkpoint_dir, CHECKPOINT_FILE)
    start = load_checkpoint(ckpt_path, net, opt, args)
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if use_cuda else None)
    per_rank_batch = max(1, args.batch_size // world)
    if rank == 0:
        print(
            f"training on {device} x {world} process(es), {torch.get_num_threads()} thread(s) each: "
            f"{len(y_train)} train / {len(y_test)} test samples, epochs {start + 1}..{args.epochs}",
            flush=True,
        )
        os.makedirs(args.checkpoint_dir, exist_ok=True)

    began = time.monotonic()
    for epoch in range(start, args.epochs):
        model.train()
        order = epoch_indices(len(y_train), args.seed, epoch, rank, world).to(device)
        loss_total, seen = 0.0, 0
        steps = -(-len(order) // per_rank_batch)
        for step, i in enumerate(range(0, len(order), per_rank_batch)):
            batch = order[i : i + per_rank_batch]
            set_lr(opt, args.lr, (epoch * steps + step) / (args.epochs * steps))
            loss = F.cross_entropy(model(shift_augment(x_train[batch])), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_total, seen = loss_total + loss.item() * len(batch), seen + len(batch)
        loss_sum = torch.tensor([loss_total, seen], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(loss_sum)
        if rank == 0:
            test_loss, accuracy, _ = evaluate(net, x_test, y_test)
            save_atomic(
                {
                    "epoch": epoch + 1,
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng_states(),
                    "hyperparameters": {k: getattr(args, k) for k in ("batch_size", "lr", "seed")},
                },
                ckpt_path,
            )
            # printed after the checkpoint is on disk: seeing epoch=N means epoch N can be resumed
            print(
                metric_line(
                    epoch=epoch + 1,
                    train_loss=(loss_sum[0] / loss_sum[1]).item(),
                    test_loss=test_loss,
                    test_accuracy=accuracy,
                ),
                flush=True,
            )
        if stop.agreed(world, device) and epoch + 1 < args.epochs:
            stopped_after = epoch + 1
            break
    else:
        stopped_after = None

    if rank == 0 and stopped_after:
        print(
            f"SIGTERM received: stopped after epoch {stopped_after}; "
            f"its checkpoint is in {args.checkpoint_dir}",
            flush=True,
        )
    elif rank == 0:
        finish(args, net, x_test, y_test, train_seconds=time.monotonic() - began)
    # Drop DDP (it holds the process group) before tearing the group down; otherwise gloo's threads can
    # outlive it into interpreter shutdown and abort the process (seen ~1 in 10 runs on torch 2.13).
    del model
    leave_process_group(world)
    code = STOPPED_EXIT_CODE if stopped_after else 0
    if world > 1:
        # Even so, gloo's threads can abort interpreter shutdown under load (torch 2.13: "terminate called
        # without an active exception", SIGABRT in a rank that finished). Every file is written and the
        # group is gone, so a distributed rank leaves without tearing the interpreter down.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if stopped_after:
        sys.exit(code)


def leave_process_group(world: int) -> None:
    """All ranks leave together, once rank 0 has written its files."""
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def finish(
    args: argparse.Namespace, net: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, train_seconds: float
) -> None:
    """Final evaluation, printed as metrics, and the model and report files."""
    test_loss, accuracy, confusion = evaluate(net, x_test, y_test)
    figures = per_class(confusion)
    print(
        metric_line(
            **{k: v for k, v in figures.items() if not k.startswith("class_")},
            final_test_loss=test_loss,
            final_test_accuracy=accuracy,
        ),
        flush=True,
    )
    for c in range(NUM_CLASSES):
        print(metric_line(**{k: v for k, v in figures.items() if k.startswith(f"class_{c}_")}), flush=True)

    os.makedirs(args.model_dir, exist_ok=True)
    cpu_net = copy.deepcopy(net).cpu().eval()
    torch.save(cpu_net.state_dict(), os.path.join(args.model_dir, "model.pth"))
    # TorchScript: the SageMaker PyTorch serving container's default model_fn loads model.pt without our code.
    torch.jit.script(cpu_net).save(os.path.join(args.model_dir, "model.pt"))

    os.makedirs(args.output_data_dir, exist_ok=True)
    report = {
        "test_accuracy": accuracy,
        "test_loss": test_loss,
        "test_samples": len(y_test),
        "per_class": figures,
        "confusion_matrix": confusion.tolist(),
        "epochs": args.epochs,
        "train_seconds_this_run": round(train_seconds, 3),
        "hyperparameters": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "seed")},
    }
    with open(os.path.join(args.output_data_dir, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"saved model.pth and model.pt to {args.model_dir}; test accuracy {accuracy:.4f}", flush=True)


def write_failure(err: BaseException) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason (1024 characters at most)."""
    path = os.path.join(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"), "failure")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"{type(err).__name__}: {err}"[:1024])
    except OSError:
        pass  # outside a SageMaker-style tree there may be nowhere to write it; the traceback still shows


if __name__ == "__main__":
    arguments = parse_args()
    try:
        train(arguments)
    except Exception as error:
        traceback.print_exc()
        write_failure(error)
        sys.exit(1)
