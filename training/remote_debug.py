"""A shell into a running training job's host: `aiops jobs connect JOB [--host algo-N]`.

A job created with ``RemoteDebugConfig.EnableRemoteDebug`` runs the SSM agent in its container, as
SageMaker's "Access a training container through AWS Systems Manager for remote debugging" says;
a Session Manager session reaches host N at the target ``sagemaker-training-job:<job>_algo-<n>``:

    aws ssm start-session --target sagemaker-training-job:<job>_algo-<n> --region <region>

The AWS CLI runs it with the Session Manager plugin (``session-manager-plugin``); without either,
the command and how to install the plugin are shown instead.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiops.errors import UsageError
from aiops.runs import STATUS_IN_PROGRESS, RunRecord

SSM_TARGET = "sagemaker-training-job:{job}_{host}"
PLUGIN = "session-manager-plugin"
PLUGIN_INSTALL = "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"
_HOST = re.compile(r"^algo-([1-9][0-9]*)$")


@dataclass(frozen=True)
class Session:
    """The command that opens the session, and what is missing to run it here."""

    argv: list[str]
    missing: tuple[str, ...]  # "aws", "session-manager-plugin"

    @property
    def line(self) -> str:
        return " ".join(self.argv)

    def how_to_install(self) -> str:
        lines = []
        if "aws" in self.missing:
            lines.append(
                "the AWS CLI v2: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
            )
        if PLUGIN in self.missing:
            lines.append(f"the Session Manager plugin for the AWS CLI: {PLUGIN_INSTALL}")
        return "; ".join(lines)


def remote_debug_enabled(record: RunRecord) -> bool:
    return bool(((record.request or {}).get("RemoteDebugConfig") or {}).get("EnableRemoteDebug"))


def session(record: RunRecord, host: str, describe: Callable[[], Mapping[str, Any]]) -> Session:
    """The session command for a host of a running job started with --remote-debug (UsageError,
    exit 2, otherwise). `describe` answers DescribeTrainingJob, asked after the local checks."""
    name = record.job_name
    if not record.remote:
        raise UsageError(
            f"{name} is a local run; 'aiops jobs connect' opens a shell on a SageMaker job's host."
        )
    if not remote_debug_enabled(record):
        raise UsageError(
            f"{name} was not started with --remote-debug; run it again with "
            "'aiops train --remote --remote-debug ...' to connect to its hosts."
        )
    match = _HOST.match(host)
    count = int(((record.request or {}).get("ResourceConfig") or {}).get("InstanceCount", 1))
    if match is None or int(match.group(1)) > count:
        hosts = ", ".join(f"algo-{i}" for i in range(1, count + 1))
        raise UsageError(f"--host {host}: {name} has {count} host(s): {hosts}.")
    status = describe().get("TrainingJobStatus")
    if status != STATUS_IN_PROGRESS:
        raise UsageError(
            f"{name} is {status}, not running: a session reaches a running job's container only "
            "(see 'aiops jobs describe')."
        )
    argv = [
        "aws",
        "ssm",
        "start-session",
        "--target",
        SSM_TARGET.format(job=name, host=host),
        "--region",
        str(record.region),
    ]
    missing = tuple(tool for tool in ("aws", PLUGIN) if shutil.which(tool) is None)
    return Session(argv, missing)
