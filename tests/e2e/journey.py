"""The user's journey, step by step, on the emulated AWS (see docs/journey.md for the commands).

Each step runs the real `aiops` CLI in a fresh process, as a user would, with the credentials of
the account's admin user and ``AWS_ENDPOINT_URL`` pointing at the platform proxy. The one step the
CLI cannot take here is applying the plan (no ``pulumi`` binary): ``apply`` does it with the
stand-in engine and saves the outputs where ``aiops deploy`` saves them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from emulator import MotoAccount, Platform
from engine import StandInEngine
from helpers import CliResult, run_aiops, run_aiops_in_process

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGITS = REPO_ROOT / "training" / "examples" / "digits"
REGION = "us-east-1"


def stack_config(*, endpoint: bool = False, model_data_url: str | None = None) -> dict[str, Any]:
    """The journey's stack file: storage, the role, and (after training) the endpoint."""
    endpoint_section: dict[str, Any] = {
        "enabled": endpoint,
        "instanceType": "ml.g4dn.xlarge",  # moto's endpoint configs refuse ml.g5.*
        "autoscaling": {"minCapacity": 1, "maxCapacity": 2},
        "deployment": {"traffic": "all-at-once", "waitSeconds": 0},
    }
    if model_data_url:
        endpoint_section["modelDataUrl"] = model_data_url
    return {"config": {"aws:region": REGION, "aiops:endpoint": endpoint_section}}


@dataclass
class Journey:
    account: MotoAccount
    platform: Platform
    root: Path
    stack: str
    home: Path = field(init=False)
    project: Path = field(init=False)
    engine: StandInEngine = field(init=False)
    outputs: dict[str, Any] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)  # every command run, for the failure message

    def __post_init__(self) -> None:
        self.home = self.root / "aiops-home"
        self.project = self.root / "project"
        self.project.mkdir(parents=True, exist_ok=True)
        (self.project / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
        self.engine = StandInEngine(
            lambda service: self.account.client(service, endpoint=self.platform.url), region=REGION
        )

    @property
    def env(self) -> dict[str, str]:
        creds = self.account.admin
        return {
            "AWS_ENDPOINT_URL": self.platform.url,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AIOPS_HOME": str(self.home),
            "AIOPS_STACK": self.stack,
            "AIOPS_AWS__JOB_POLL_SECONDS": "0.5",
            "OMP_NUM_THREADS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def aiops(self, *args: str, timeout: float = 600) -> CliResult:
        result = run_aiops(self.home, self.project, *args, env=self.env, timeout=timeout)
        self.transcript.append(
            f"$ aiops {' '.join(args)}\n[exit {result.returncode}]\n{result.output[-3000:]}"
        )
        return result

    def log(self) -> str:
        errors = "\n".join(self.platform.errors[-15:])
        return "\n".join(self.transcript) + f"\n--- errors answered through the proxy ---\n{errors}"

    # -- the stack

    def write_stack(self, config: dict[str, Any]) -> Path:
        path = self.project / f"Pulumi.{self.stack}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def set_config(self, dotted: str, value: Any) -> None:
        """What `pulumi config set --path KEY VALUE` writes into the stack file."""
        path = self.project / f"Pulumi.{self.stack}.yaml"
        doc = yaml.safe_load(path.read_text())
        top, *rest = dotted.split(".")
        node = doc["config"].setdefault(top, {})
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def preview(self) -> dict[str, Any]:
        # the same entry in this process: a fresh one spends ~4 s importing pulumi_aws for each of a
        # journey's previews (tests/infra runs the command in its own process)
        result = run_aiops_in_process(
            self.home, self.project, "preview", "--offline", "--json", "--stack", self.stack, env=self.env
        )
        self.transcript.append(
            f"$ aiops preview --offline --json --stack {self.stack}\n[exit {result.returncode}]\n"
            f"{result.stderr[-3000:]}"
        )
        if result.returncode != 0:
            raise AssertionError(f"aiops preview --offline failed:\n{self.log()}")
        return json.loads(result.stdout)

    def apply(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The stand-in for `aiops deploy` applying the plan; outputs saved as deploy saves them."""
        from aiops.stack import write_outputs

        self.outputs = self.engine.apply(plan)
        write_outputs(self.home, self.stack, self.outputs)
        self.transcript.append("[stand-in engine] " + "; ".join(self.engine.log[-40:]))
        return self.outputs

    def resolve_model(self, spec: str) -> str:
        """`aiops deploy --model SPEC` up to where it needs the pulumi binary: the model's S3 URI
        (a local archive uploaded to the stack's bucket under its content hash)."""
        code = (
            "import json, sys\n"
            "from aiops.artifacts import endpoint\n"
            "from aiops.stack import read_outputs, resolve_stack\n"
            "from aiops.settings import get_settings\n"
            "s = get_settings()\n"
            "stack = resolve_stack(None, s)\n"
            "outputs = read_outputs(s.home, stack)\n"
            "print(endpoint.resolve(sys.argv[1], outputs=outputs, region=outputs.region, stack=stack))\n"
        )
        return self._deploy_step(code, spec, f"resolving --model {spec}")

    def _deploy_step(self, code: str, spec: str, what: str, *args: str) -> str:
        """Run ``code`` with argv ``spec, *args`` as the deploy command's process would (the journey's
        environment, the project folder); its last line of output, the step's transcript kept."""
        import subprocess

        proc = subprocess.run(
            [sys.executable, "-c", code, spec, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            cwd=str(self.project),
            timeout=120,
        )
        self.transcript.append(
            f"[deploy --model {spec}] exit {proc.returncode}\n{proc.stdout}{proc.stderr[-2000:]}"
        )
        if proc.returncode != 0:
            raise AssertionError(f"{what} failed:\n{self.log()}")
        return proc.stdout.strip().splitlines()[-1]

    def deploy_model(self, spec: str) -> dict[str, Any]:
        """`aiops deploy --model SPEC` up to where it needs the pulumi binary (infra/commands.py
        `deploy`): the same checks and `resolve_for_endpoint` against the stack file, then the keys it
        sets (`automation.model_config`) written into the stack file; the resolved model's fields."""
        code = (
            "import json, sys\n"
            "from pathlib import Path\n"
            "from aiops.artifacts.endpoint import classify\n"
            "from aiops.infra import fitcheck\n"
            "from aiops.infra.automation import model_config\n"
            "from aiops.infra.commands import stack_config\n"
            "from aiops.settings import get_settings\n"
            "from aiops.stack import read_outputs\n"
            "spec, stack, runs = sys.argv[1], sys.argv[2], get_settings().runs_dir\n"
            "classify(spec, runs_dir=runs)\n"
            "placeholder = {'aiops:endpoint.modelDataUrl': 's3://placeholder-bucket/model.tar.gz'}\n"
            "cfg = stack_config(Path.cwd(), stack, placeholder)\n"
            "fitcheck.precheck(spec, cfg=cfg, region=cfg.region, runs_dir=runs)\n"
            "outputs = read_outputs(get_settings().home, stack)\n"
            "r = fitcheck.resolve_for_endpoint(\n"
            "    spec, cfg=cfg, outputs=outputs, region=cfg.region, stack=stack, runs_dir=runs\n"
            ")\n"
            "keys = model_config(r.uri, r.size_gb, r.program)\n"
            "print(json.dumps({'uri': r.uri, 'size_gb': r.size_gb, 'note': r.note, 'keys': keys}))\n"
        )
        resolved = json.loads(self._deploy_step(code, spec, f"deploy --model {spec}", self.stack))
        for key, value in resolved["keys"].items():  # as `pulumi config set --path` writes them: strings
            self.set_config(key, value)
        return resolved
