"""The options `aiops train` and `aiops tune` share, declared once as `Annotated` types, and the one
reading of them into the typed launch config (`launch_options`, `training.launch.LaunchOptions`).

A command whose value means something narrower words its help itself (`reworded`: a tuning job's
`--instance-count` is per trial); the flag, its type and its panel stay the ones declared here.
Only typer is imported: `aiops --help` stays light.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer

if TYPE_CHECKING:
    from aiops.training.launch import LaunchOptions

REMOTE = "Remote"


def _remote(*names: str, help: str) -> Any:
    return typer.Option(*names, help=help, rich_help_panel=REMOTE)


def reworded(option: Any, help: str, *, panel: str | None = None) -> Any:
    """The typer option of an `Annotated` type declared here, with another help text (and panel)."""
    info = copy.copy(get_args(option)[1])
    info.help = help
    info.rich_help_panel = panel or info.rich_help_panel
    return info


# the job
SourceDir = Annotated[
    str | None, typer.Option("--source-dir", help="Folder of code to ship with the script.")
]
Hp = Annotated[
    list[str] | None, typer.Option("--hp", help="Hyperparameter KEY=VALUE (repeatable; JSON values).")
]
Channel = Annotated[list[str] | None, typer.Option("--channel", help="Input channel NAME=PATH (repeatable).")]
Env = Annotated[
    list[str] | None,
    typer.Option(
        "--env",
        help="Environment variable KEY=VALUE of the script (repeatable): the local process's, "
        "the job's Environment. Not SM_*/SAGEMAKER_*, not secrets.",
    ),
]
Metric = Annotated[
    list[str] | None, typer.Option("--metric", help="Metric NAME=REGEX, first group is the value.")
]
JobName = Annotated[
    str | None, typer.Option("--job-name", help="Name of the run (default: script name + time).")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout (logs go to stderr).")]

# SageMaker jobs
Remote = Annotated[bool, _remote("--remote", help="Run as a SageMaker managed training job.")]
InstanceType = Annotated[  # a local run records it too: not in the Remote panel
    str | None,
    typer.Option("--instance-type", help="Recorded locally (resourceconfig.json); used by remote jobs."),
]
InstanceCount = Annotated[int, _remote("--instance-count", help="Hosts of a remote job.")]
Spot = Annotated[bool | None, _remote("--spot/--on-demand", help="Managed spot (default) or on-demand.")]
MaxRun = Annotated[int | None, _remote("--max-run", help="Max run time in seconds.")]
MaxWait = Annotated[
    int | None, _remote("--max-wait", help="Spot: max wait incl. run time (default 2x max run).")
]
VolumeSize = Annotated[int | None, _remote("--volume-size", help="EBS volume per host, GB.")]
Role = Annotated[str | None, _remote("--role", help="Execution role ARN (default: the stack's).")]
Bucket = Annotated[str | None, _remote("--bucket", help="S3 bucket (default: the stack's).")]
Region = Annotated[str | None, _remote("--region", help="AWS region.")]
Stack = Annotated[
    str | None,
    _remote(
        "--stack",
        "-s",
        help="Stack whose outputs give the role, bucket, key and network (default: AIOPS_STACK, else dev).",
    ),
]
Vpc = Annotated[
    bool | None,
    _remote("--vpc/--no-vpc", help="Run in the stack's VPC (default: when the stack has one)."),
]
NetworkIsolation = Annotated[
    bool,
    _remote(
        "--network-isolation",
        help="EnableNetworkIsolation: no network in the container (no pip install of requirements.txt).",
    ),
]
ImageUri = Annotated[str | None, _remote("--image-uri", help="Training image (default: the PyTorch DLC).")]
FrameworkVersion = Annotated[str | None, _remote("--framework-version", help="PyTorch container version.")]
Wait = Annotated[bool, _remote("--wait/--no-wait", help="Follow status and logs until the job ends.")]
Download = Annotated[bool, _remote("--download", help="Download model.tar.gz when the job completes.")]
MaxCost = Annotated[
    float | None, _remote("--max-cost", help="Budget in USD: refuse a job that may cost more.")
]
Yes = Annotated[bool, _remote("--yes", "-y", help="Launch even above the budget.")]
ModelParams = Annotated[
    float | None,
    _remote(
        "--model-params",
        help="The model's parameter count (e.g. 7e9): refuse an instance type whose GPUs "
        "cannot hold its training state (weights, grads, Adam).",
    ),
]
Fsdp = Annotated[
    bool,
    _remote(
        "--fsdp",
        help="With --model-params: the state is sharded over every GPU of every host (FSDP full sharding).",
    ),
]
KeepAlive = Annotated[
    str | None,
    _remote(
        "--keep-alive",
        help="Keep the instances warm after the job (e.g. 30m, at most 1h) for the next matching job "
        "(KeepAlivePeriodInSeconds; on-demand).",
    ),
]
RemoteDebug = Annotated[
    bool,
    _remote(
        "--remote-debug",
        help="RemoteDebugConfig: open a shell on a running host with 'aiops jobs connect' "
        "(the stack needs access.remoteDebug: true).",
    ),
]
MaxAttempts = Annotated[
    int | None,
    _remote(
        "--max-attempts",
        help="With --instance-type A,B,C: at most this many jobs, one per type, after capacity errors.",
    ),
]


# what only `aiops train` takes
HyperparametersFile = Annotated[
    Path | None,
    typer.Option("--hyperparameters", help="JSON file of hyperparameters (--hp overrides it)."),
]
Secret = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        help="Secret NAME=ARN of AWS Secrets Manager (repeatable): the script reads it as "
        "docs/training.md#secrets shows; its value is never sent or stored.",
    ),
]
InputMode = Annotated[
    list[str] | None,
    typer.Option(
        "--input-mode",
        help="[NAME=]File|FastFile|Pipe: a channel's "
        "InputMode (every channel without NAME; runs as File locally).",
    ),
]
ChannelSharding = Annotated[
    list[str] | None,
    typer.Option(
        "--channel-sharding",
        help="[NAME=]ShardedByS3Key|"
        "FullyReplicated: each host gets a disjoint subset of the "
        "channel's S3 objects (remote jobs).",
    ),
]
Nproc = Annotated[int | None, typer.Option("--nproc", help="Processes per host: launch with torchrun.")]
Distribution = Annotated[
    str | None,
    typer.Option(
        "--distribution",
        help="none | torch_distributed | mpi (the SDK's `distribution`; default none, "
        "torch_distributed with --nproc). Without one, each host runs the script once.",
    ),
]
FollowSymlinks = Annotated[
    bool,
    typer.Option(
        "--follow-symlinks",
        help="Ship what symlinks pointing outside the source dir or a channel point to.",
    ),
]
OutputDir = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        help="Also place artifacts in OUTPUT_DIR/<job>/output/ (like the SDK's output_path).",
    ),
]
Resume = Annotated[
    str | None,
    typer.Option("--resume", help="Run again with the checkpoint folder of this earlier run."),
]
Framework = Annotated[
    str | None,
    typer.Option(
        "--framework",
        help="pytorch (default) | huggingface: the training image, as the SDK's PyTorch / HuggingFace "
        "estimators.",
        rich_help_panel=REMOTE,
    ),
]
TransformersVersion = Annotated[
    str | None,
    typer.Option(
        "--transformers-version",
        help="The Hugging Face image's transformers (e.g. 4.56); its PyTorch comes from the SDK's table.",
        rich_help_panel=REMOTE,
    ),
]


def launch_options(
    *,
    instance_type: str | None = None,
    instance_count: int = 1,
    spot: bool | None = None,
    max_run: int | None = None,
    max_wait: int | None = None,
    volume_size: int | None = None,
    keep_alive: str | None = None,
    role: str | None = None,
    bucket: str | None = None,
    region: str | None = None,
    stack: str | None = None,
    vpc: bool | None = None,
    network_isolation: bool = False,
    image_uri: str | None = None,
    framework_version: str | None = None,
    max_cost: float | None = None,
    yes: bool = False,
    model_params: float | None = None,
    fsdp: bool = False,
    remote_debug: bool = False,
    max_attempts: int | None = None,
    wait: bool = True,
    download: bool = False,
    output_dir: Path | None = None,
) -> LaunchOptions:
    """The command line's launch values as the typed config (each part checks itself: exit 2)."""
    from aiops.training import launch
    from aiops.training.remote_request import parse_duration

    return launch.LaunchOptions(
        compute=launch.Compute(
            instance_type=instance_type,
            instance_count=instance_count,
            volume_size_in_gb=volume_size,
            enable_managed_spot_training=spot,
            keep_alive_period_in_seconds=(
                parse_duration(keep_alive, "--keep-alive") if keep_alive is not None else None
            ),
        ),
        stopping_condition=launch.StoppingCondition(
            max_runtime_in_seconds=max_run, max_wait_time_in_seconds=max_wait
        ),
        networking=launch.Networking(vpc=vpc, enable_network_isolation=network_isolation),
        access=launch.Access(role=role, bucket=bucket, region=region, stack=stack),
        image=launch.Image(training_image=image_uri, framework_version=framework_version),
        budget=launch.Budget(max_cost=max_cost, confirmed=yes),
        gpu_fit=launch.GpuFit(model_params=model_params, fsdp=fsdp),
        remote_debug=remote_debug,
        max_attempts=max_attempts,
        wait=wait,
        download=download,
        output_dir=output_dir,
    )


def parse_pairs(
    values: list[str] | None, option: str, example: str, *, unique: bool = False
) -> dict[str, str]:
    """Repeated KEY=VALUE options as a dict (`unique`: a key given twice is refused)."""
    from aiops.errors import UsageError

    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} {example}.")
        if unique and key.strip() in pairs:
            raise UsageError(
                f"{option} {key.strip()} is given twice ({pairs[key.strip()]} and {value}); "
                "give each name once."
            )
        pairs[key.strip()] = value
    return pairs


def hyperparameters(values: list[str] | None) -> dict[str, Any]:
    """`--hp KEY=VALUE` options, each value read as the toolkit reads it (JSON, else a string)."""
    from aiops.training.job_inputs import parse_hyperparameter_value

    return {
        key: parse_hyperparameter_value(raw) for key, raw in parse_pairs(values, "--hp", "epochs=10").items()
    }


def channels(values: list[str] | None) -> dict[str, str]:
    return parse_pairs(values, "--channel", "train=./data/train", unique=True)


def environment(values: list[str] | None) -> dict[str, str]:
    return parse_pairs(values, "--env", "HF_HUB_OFFLINE=1", unique=True)


def load_hyperparameters_file(path: Path) -> dict[str, Any]:
    from aiops.errors import UsageError

    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise UsageError(f"--hyperparameters {path}: cannot read it ({err.strerror}).") from None
    except ValueError as err:
        raise UsageError(f"--hyperparameters {path}: not valid JSON ({err}).") from None
    if not isinstance(data, dict):
        raise UsageError(f"--hyperparameters {path}: expected a JSON object of name: value.")
    return data
