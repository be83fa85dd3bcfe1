"""`aiops model package`, `aiops serve` of a tarball and of a local run, `aiops invoke`."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from helpers import free_port

from .conftest import save_double


def _make_run(aiops_home: Path, tmp_path: Path, name="digits-1", status="Completed") -> Path:
    run = aiops_home / "runs" / name
    model_dir = run / "opt" / "ml" / "model"
    save_double(model_dir)
    (model_dir / "extra.json").write_text("{}")
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text("print('train')\n")
    (src / "inference.py").write_text(
        "def output_fn(prediction, accept):\n    return 'run-script', 'text/plain'\n"
    )
    (src / "requirements.txt").write_text("numpy\n")
    (run / "run.json").write_text(
        json.dumps(
            {
                "job_name": name,
                "status": status,
                "entry_point": "train.py",
                "source_dir": str(src),
                "artifacts": {"model": str(run / "output" / "model.tar.gz")},
            }
        )
    )
    return run


def test_package_is_deterministic_and_in_sagemaker_layout(run_cli, tmp_path):
    model = save_double(tmp_path / "m")
    (model / "sub").mkdir()
    (model / "sub" / "vocab.txt").write_text("a\nb\n")
    script = tmp_path / "inference.py"
    script.write_text("def predict_fn(d, m):\n    return d\n")
    req = tmp_path / "req.txt"
    req.write_text("numpy\n")
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}" / "model.tar.gz"
        r = run_cli(
            "model",
            "package",
            str(model),
            "--out",
            str(out),
            "--entry-point",
            str(script),
            "--requirements",
            str(req),
        )
        assert r.returncode == 0, r.output
        outs.append(out.read_bytes())
        # other file times must not change the bytes (the wall clock cannot reach them either: every
        # tar member and the gzip header carry mtime 0, checked below)
        for path in (model / "model.pt", model / "sub" / "vocab.txt", script):
            os.utime(path, (1_000_000_000 + i, 1_000_000_000 + i))
    assert outs[0] == outs[1]
    with tarfile.open(tmp_path / "out0" / "model.tar.gz") as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert set(names) == {
            "code",
            "code/inference.py",
            "code/requirements.txt",
            "model.pt",
            "sub",
            "sub/vocab.txt",
        }
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, 0, "")}
    assert outs[0][4:8] == b"\0\0\0\0"  # gzip header mtime


def test_package_and_serve_a_local_run(run_cli, aiops_home, tmp_path, start_server):
    _make_run(aiops_home, tmp_path)
    out = tmp_path / "model.tar.gz"
    r = run_cli("model", "package", "digits-1", "--out", str(out))
    assert r.returncode == 0, r.output
    with tarfile.open(out) as tar:
        assert {"model.pt", "extra.json", "code/inference.py", "code/requirements.txt"} <= set(tar.getnames())
    # serve the tarball and the run by name: both use the run's inference script
    for model in (out, "digits-1"):
        s = start_server(model)
        resp = s.invoke(b"[1]")
        assert (resp.status, resp.body, resp.headers["content-type"]) == (200, b"run-script", "text/plain")
        assert s.stop() == 0


def test_serve_with_entry_point_override(start_server, tmp_path):
    model = save_double(tmp_path / "m")
    script = tmp_path / "other" / "alt.py"
    script.parent.mkdir()
    script.write_text("def output_fn(p, accept):\n    return 'alt'\n")
    s = start_server(model, "--entry-point", str(script))
    assert s.invoke(b"[1]").body == b"alt"


def test_invoke_prints_the_response_and_latency(run_cli, start_server, double_dir, tmp_path):
    s = start_server(double_dir)
    r = run_cli("invoke", "--url", s.url, "--data", "[[1, 2]]")
    assert r.returncode == 0, r.output
    assert json.loads(r.stdout) == [[2.0, 4.0]]
    assert "HTTP 200 application/json in" in r.stderr and " ms" in r.stderr
    data = tmp_path / "x.csv"
    data.write_text("1,2\n3,4\n")
    r = run_cli("invoke", "--url", s.url, "--data", str(data), "--accept", "text/csv")
    assert r.returncode == 0 and r.stdout.split() == ["2.0,4.0", "6.0,8.0"]
    r = run_cli("invoke", "--url", s.url, "--data", "[1]", "--accept", "image/png")
    assert r.returncode == 1 and r.stderr.startswith("error: HTTP 406") and "Traceback" not in r.stderr


def test_bad_inputs_are_one_line_usage_errors(run_cli, aiops_home, tmp_path):
    r = run_cli("serve", "no-such-model")
    assert r.returncode == 2 and r.stderr.startswith("error: no-such-model: no such model.tar.gz")
    assert r.stderr.count("\n") == 1
    _make_run(aiops_home, tmp_path, name="failed-1", status="Failed")
    r = run_cli("serve", "failed-1")
    assert r.returncode == 2 and "only a Completed run" in r.stderr
    r = run_cli("invoke", "--data", "{not json", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "neither a file nor valid JSON" in r.stderr
    for missing in ("missing.json", "./payloads/x"):
        r = run_cli("invoke", "--data", missing, "--url", "http://127.0.0.1:9")
        assert r.returncode == 2 and r.stderr == f"error: --data {missing}: no such file\n", r.stderr
    empty = tmp_path / "no-model"
    empty.mkdir()
    r = run_cli("serve", str(empty), "--port", str(free_port()))  # a folder without a model is bad input
    assert r.returncode == 2 and "exactly one .pt or .pth file is needed" in r.stderr, r.output
    assert r.stderr.count("error: ") == 1 and "Traceback" not in r.output
    r = run_cli(
        "serve",
        str(tmp_path),
        "--port",
        "1",
        "--host",
        "127.0.0.1",
        env={"SAGEMAKER_MODEL_SERVER_WORKERS": "two"},
    )
    assert r.returncode == 2 and "SAGEMAKER_MODEL_SERVER_WORKERS='two'" in r.stderr


def test_help_imports_no_heavy_modules(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from aiops.cli.app import main; main(['serve', '--help']); "
        "print(sorted(m for m in ('torch','numpy','uvicorn','boto3','starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_package_out_an_existing_folder_writes_model_tar_gz_inside(run_cli, tmp_path):
    model = save_double(tmp_path / "m")
    out = tmp_path / "dist"
    out.mkdir()
    r = run_cli("model", "package", str(model), "--out", str(out))
    assert r.returncode == 0, r.output
    assert "Traceback" not in r.output
    with tarfile.open(out / "model.tar.gz") as tar:
        assert "model.pt" in tar.getnames()
    assert f"wrote {out / 'model.tar.gz'}" in r.stdout


def test_invoke_error_names_the_request_once(run_cli, start_server, tmp_path):
    from .conftest import write_script

    model = save_double(tmp_path / "raising")
    write_script(model, "def predict_fn(data, model):\n    raise ValueError('no')\n")
    s = start_server(model)
    r = run_cli("invoke", "--url", s.url, "--data", "[1]")
    assert r.returncode == 1 and r.stderr.startswith("error: HTTP 500: "), r.output
    rid = s.invoke(b"[1]").headers["x-amzn-requestid"].rsplit("-", 1)[0]  # the server's id prefix
    assert r.stderr.count(rid) == 1, r.stderr
    assert "see the server log for request" in r.stderr
    # a 4xx names the request at the end, once
    r = run_cli("invoke", "--url", s.url, "--data", "[1]", "--accept", "image/png")
    assert r.returncode == 1 and r.stderr.count(rid) == 1 and r.stderr.rstrip().endswith(")"), r.stderr
