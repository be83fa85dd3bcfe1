"""A run folder's layout: every path into it, and the SageMaker container tree it holds.

A run folder mirrors where SageMaker keeps a job's pieces::

    <runs>/<job>/run.json          the run record (status, timings, config, metrics, artifacts)
    <runs>/<job>/train.log         everything the script printed (local runs)
    <runs>/<job>/metrics.jsonl     one metric sample a line (local runs)
    <runs>/<job>/output/           model.tar.gz, output.tar.gz  (S3: <output_path>/<job>/output/)
    <runs>/<job>/opt/ml/...        the container tree the script ran in (SAGEMAKER_BASE_DIR):
                                   code/, model/, input/data/<channel>/, checkpoints/, output/

Nothing here touches the disk but `RunFolder.local_model_archive`; the record itself is `aiops.runs`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUN_RECORD = "run.json"
TRAIN_LOG = "train.log"
METRICS_LOG = "metrics.jsonl"
TORCHRUN_ERROR = "torchrun-error.json"  # torchrun's TORCHELASTIC_ERROR_FILE: the first failed rank's error
OUTPUT_DIR = "output"
MODEL_ARCHIVE = "model.tar.gz"
OUTPUT_ARCHIVE = "output.tar.gz"
CONTAINER_BASE = ("opt", "ml")  # the container's /opt/ml, relocated into the run folder


@dataclass(frozen=True)
class ContainerPaths:
    """The SageMaker tree rooted at ``base`` (``/opt/ml`` in the container)."""

    base: Path

    @property
    def code(self) -> Path:
        return self.base / "code"

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def input(self) -> Path:
        return self.base / "input"

    @property
    def input_config(self) -> Path:
        return self.input / "config"

    @property
    def input_data(self) -> Path:
        return self.input / "data"

    @property
    def output(self) -> Path:
        return self.base / "output"

    @property
    def output_data(self) -> Path:
        return self.output / "data"

    @property
    def output_intermediate(self) -> Path:
        return self.output / "intermediate"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"

    def channel(self, name: str) -> Path:
        return self.input_data / name

    def all_dirs(self) -> list[Path]:
        return [
            self.code,
            self.model,
            self.input_config,
            self.input_data,
            self.output_data,
            self.output_intermediate,
            self.checkpoints,
        ]


@dataclass(frozen=True)
class RunFolder:
    """Every path into one run folder (nothing here touches the disk)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def record_file(self) -> Path:
        return self.root / RUN_RECORD

    @property
    def log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_LOG

    @property
    def torchrun_error(self) -> Path:
        return self.root / TORCHRUN_ERROR

    @property
    def output(self) -> Path:
        """``<job>/output/``: what SageMaker uploads to ``<S3OutputPath>/<job>/output/``."""
        return self.root / OUTPUT_DIR

    @property
    def model_archive(self) -> Path:
        return self.output / MODEL_ARCHIVE

    @property
    def output_archive(self) -> Path:
        return self.output / OUTPUT_ARCHIVE

    # the container tree the script ran in (SAGEMAKER_BASE_DIR)
    @property
    def base(self) -> Path:
        return self.root.joinpath(*CONTAINER_BASE)

    @property
    def container(self) -> ContainerPaths:
        return ContainerPaths(self.base)

    @property
    def code_dir(self) -> Path:
        return self.container.code

    @property
    def model_dir(self) -> Path:
        return self.container.model

    @property
    def checkpoints(self) -> Path:
        return self.container.checkpoints

    def channel(self, name: str) -> Path:
        return self.container.channel(name)

    def local_model_archive(self) -> Path | None:
        """A model.tar.gz kept in the folder (a local run's, or a remote job's downloaded one)."""
        for candidate in (self.root / MODEL_ARCHIVE, self.model_archive):
            if candidate.is_file():
                return candidate
        return None
