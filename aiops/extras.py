"""The one way to say that an optional extra (pyproject.toml ``[project.optional-dependencies]``) is
missing."""

from __future__ import annotations

import importlib.util

from aiops.errors import UsageError

#: optional top-level modules and the extra that brings each
MODULE_EXTRAS = {
    "boto3": "aws",
    "botocore": "aws",
    "s3transfer": "aws",
    "pathspec": "aws",
    "numpy": "examples",
    "sklearn": "examples",
    "httptools": "serve",
    "uvloop": "serve",
    "werkzeug": "serve",
    "pulumi": "infra",
    "pulumi_aws": "infra",
    "yaml": "infra",
    "matplotlib": "plot",
    "PIL": "plot",
    "optuna": "tune",
    "sagemaker": "images",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "transformers": "finetune",
    "peft": "finetune",
    "accelerate": "finetune",
    "tokenizers": "finetune",
}


def require_extra(
    extra: str, what: str, *, missing: str | None = None, instead: str | None = None
) -> UsageError:
    """The error (exit 2, one line) to raise: ``WHAT needs MISSING, which is not installed: pip install
    'aiops[EXTRA]'`` (``, or INSTEAD``)."""
    needs = (
        f" needs {missing}, which {'are' if ', ' in missing else 'is'} not installed"
        if missing
        else " is not installed"
    )
    return UsageError(f"{what}{needs}: pip install 'aiops[{extra}]'{', or ' + instead if instead else ''}.")


def missing_modules(*modules: str) -> list[str]:
    """Those of ``modules`` that cannot be imported (found without importing them)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def check_extra(extra: str, what: str, *modules: str) -> None:
    """Raise ``require_extra`` when any of ``modules`` (default: the extra's own) is missing."""
    modules = modules or tuple(m for m, e in MODULE_EXTRAS.items() if e == extra)
    missing = missing_modules(*modules)
    if missing:
        raise require_extra(extra, what, missing=", ".join(missing))


def for_missing_module(exc: ModuleNotFoundError) -> str | None:
    """The one line for an optional module found missing at run time (None: not an optional one)."""
    top = (exc.name or "").split(".")[0]
    if top == "torch":
        return "this needs PyTorch: install the build you want (pip install torch), then run it again."
    extra = MODULE_EXTRAS.get(top)
    if extra is None:
        return None
    return str(require_extra(extra, "this", missing=top))
