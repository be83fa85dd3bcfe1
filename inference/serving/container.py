"""The bring-your-own-container entry: SageMaker runs ``docker run IMAGE serve``.

Serves ``/opt/ml/model`` (code in ``/opt/ml/model/code``, ``SAGEMAKER_PROGRAM``) on 0.0.0.0:8080
(``SAGEMAKER_BIND_TO_PORT``) with one worker per CPU unless ``SAGEMAKER_MODEL_SERVER_WORKERS`` says
otherwise, after pip-installing ``code/requirements.txt`` as the stock container does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from aiops.inference.serving.supervisor import serve, serve_settings

    from aiops.errors import AiopsError

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "serve":
        print(
            "usage: serve   (the SageMaker hosting contract runs the image with the argument 'serve')",
            file=sys.stderr,
        )
        return 2
    try:
        workers = None if os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS") else (os.cpu_count() or 1)
        opts = serve_settings(
            host=os.environ.get("AIOPS_SERVE__HOST", "0.0.0.0"), workers=workers, install_requirements=True
        )
        model_dir = os.environ.get("SM_MODEL_DIR", "/opt/ml/model")
        return serve(
            model_dir,
            opts,
            runs_dir=Path("/nonexistent"),
            on_ready=lambda url: print(f"serving {model_dir} on {url}", file=sys.stderr, flush=True),
        )
    except AiopsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
