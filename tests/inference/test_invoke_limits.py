"""`aiops invoke` against servers that answer too much, forever, or with terminal escapes: the client
holds a capped body, streams big ones to disk through a private temporary file, and refuses with
one line. Every client here is the real CLI in its own process; its memory is the kernel's count,
the peak RSS (VmHWM) in /proc/<pid>/status, read while it waits or as it exits. (wait4's
ru_maxrss would not do: a child forked from the test process reports the test's own RSS.)"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until
from hostile_http import HostileServer, chunked, endless

MB = 1 << 20
# An aiops invoke process is ~50 MB; the attacks below send it 128-256 MB. Anything that held the
# body would pass this bound by far; a client that streams stays well under it.
RSS_BOUND_MB = 120


# `aiops` as its console entry runs it (aiops.cli.app.main), and as it exits, its /proc/self/status
# copied to the file named first
ENTRY = (
    "import atexit, shutil, sys; from aiops.cli.app import main; "
    "atexit.register(shutil.copyfile, '/proc/self/status', sys.argv.pop(1)); "
    "sys.exit(main(sys.argv[1:]))"
)


def _cli(home: Path, cwd: Path, *args: str, env: dict | None = None, stdout=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, str(cwd / f"status-{os.urandom(4).hex()}"), *args],
        cwd=cwd,
        env={**os.environ, "AIOPS_HOME": str(home), **(env or {})},
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.status_file = Path(proc.args[3])  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str, float]:
    """Wait for the process: exit code, stderr, peak RSS in MB as it exited."""
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode(), _peak_rss_mb(proc.status_file)  # type: ignore[attr-defined]


def _peak_rss_mb(status: Path) -> float:
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_a_huge_content_length_is_refused_at_the_cap_with_bounded_memory(aiops_home, tmp_path):
    def respond():
        yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8000000000\r\n\r\n"
        yield from endless()

    with HostileServer(respond) as server:
        proc = _cli(
            aiops_home, tmp_path, "invoke", "--url", server.url, "--data", "{}", "--max-response-mb", "8"
        )
        code, stderr, peak = _finish(proc)
    assert code == 2
    assert "larger than 8 MB" in _one_error_line(stderr)
    assert peak < RSS_BOUND_MB, f"peak RSS {peak:.0f} MB"
    assert server.sent < 64 * MB  # the client stopped reading at the cap, long before the server's 256 MB


def test_an_endless_body_goes_to_disk_without_growing_and_a_break_keeps_the_file(aiops_home, tmp_path):
    """`-o FILE` streams: 128 MB in, memory flat (read from /proc while the client still waits for
    more); the body then breaks off, so FILE keeps its old content and no temporary file is left."""
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")

    def respond():
        yield (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        yield from chunked(endless())

    with HostileServer(respond, cap=128 * MB, stall=True) as server:
        proc = _cli(aiops_home, tmp_path, "invoke", "--url", server.url, "--data", "{}", "-o", str(out))
        wait_until(server.done.is_set, "the server sending 128 MB", timeout=120)
        live_peak = _peak_rss_mb(Path(f"/proc/{proc.pid}/status"))  # alive: the stall leaves it waiting
        server.release()
        code, stderr, _ = _finish(proc)
    assert live_peak < RSS_BOUND_MB, f"peak RSS {live_peak:.0f} MB with 128 MB received"
    assert code == 1 and "cannot reach" in _one_error_line(stderr)
    assert out.read_bytes() == b"old" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_endless_body_to_a_file_stops_at_the_cap(aiops_home, tmp_path, stream):
    out = tmp_path / "out.bin"

    def respond():
        yield b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        yield from chunked(endless())

    with HostileServer(respond) as server:
        proc = _cli(
            aiops_home,
            tmp_path,
            "invoke",
            "--url",
            server.url,
            "--data",
            "{}",
            "-o",
            str(out),
            "--max-response-mb",
            "4",
            *(["--stream"] if stream else []),
        )
        code, stderr, peak = _finish(proc)
    assert code == 2 and "larger than 4 MB" in _one_error_line(stderr)
    assert peak < RSS_BOUND_MB
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_huge_chunk_size_line_is_one_line_not_a_memory_error(aiops_home, tmp_path, stream):
    """A chunk announcing 2**64-1 bytes: the client never asks for that much at once; the body
    breaking off after 1 MB is one line."""

    def respond():
        yield (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"f" * 16
            + b"\r\n"
        )
        yield b"x" * MB

    with HostileServer(respond) as server:
        proc = _cli(
            aiops_home,
            tmp_path,
            "invoke",
            "--url",
            server.url,
            "--data",
            "{}",
            *(["--stream"] if stream else []),
        )
        code, stderr, peak = _finish(proc)
    line = _one_error_line(stderr)
    assert code == 1 and ("broke" in line or "cannot reach" in line), line
    assert "MemoryError" not in stderr and peak < RSS_BOUND_MB


ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b]52;c;ZWNobyBoaQ==\x07red:\x1b[31mX\x1b[0m\u009b1m"


def _escaping_server(stream: bool, status: int = 200) -> HostileServer:
    """Raw escape bytes in a text body (JSON would have to write them as \\u001b), or in an error's
    JSON message (where a client decodes them)."""
    body = ESCAPES.encode() if status == 200 else json.dumps({"error": ESCAPES}).encode()
    reason = b"OK" if status == 200 else b"Bad Request"

    def respond():
        if stream:
            yield (
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                % (status, reason)
                + b"".join(chunked(iter([ESCAPES.encode()[:7], ESCAPES.encode()[7:]])))
                + b"0\r\n\r\n"
            )
        else:
            ctype = b"text/plain" if status == 200 else b"application/json"
            yield (
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, reason, ctype, len(body))
                + body
            )

    return HostileServer(respond)


def _on_a_terminal(aiops_home: Path, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """The CLI with its stdout on a pseudo-terminal: what the terminal was sent, decoded."""
    master, slave = pty.openpty()
    proc = _cli(aiops_home, tmp_path, *args, stdout=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            block = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not block:
            break
        shown += block
    os.close(master)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, shown.decode("utf-8", "replace"), stderr.decode()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_escape_sequences_are_shown_not_run_on_a_terminal(aiops_home, tmp_path, stream):
    with _escaping_server(stream) as server:
        code, shown, stderr = _on_a_terminal(
            aiops_home,
            tmp_path,
            "invoke",
            "--url",
            server.url,
            "--data",
            "{}",
            *(["--stream"] if stream else []),
        )
    assert code == 0, stderr
    assert "\x1b" not in shown and "\x07" not in shown and "\u009b" not in shown
    assert "\\x1b]0;owned\\x07" in shown and "red:\\x1b[31mX" in shown  # still readable
    assert "\x1b" not in stderr


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_output_files_and_pipes_keep_the_exact_bytes(aiops_home, tmp_path, stream):
    out = tmp_path / "out.txt"
    flag = ["--stream"] if stream else []
    with _escaping_server(stream) as server:
        proc = _cli(
            aiops_home, tmp_path, "invoke", "--url", server.url, "--data", "{}", "-o", str(out), *flag
        )
        assert proc.wait(60) == 0, proc.stderr.read()
    expected = ESCAPES.encode()
    assert out.read_bytes() == expected
    with _escaping_server(stream) as server:  # into a pipe: the bytes as they came
        piped = subprocess.run(
            [sys.executable, "-m", "aiops.cli.app", "invoke", "--url", server.url, "--data", "{}", *flag],
            capture_output=True,
            check=False,
            env={**os.environ, "AIOPS_HOME": str(aiops_home)},
        )
    assert piped.returncode == 0 and expected in piped.stdout


def test_an_error_message_with_escapes_is_one_neutralized_line(aiops_home, tmp_path):
    with _escaping_server(False, status=400) as server:
        proc = _cli(aiops_home, tmp_path, "invoke", "--url", server.url, "--data", "{}")
        code, stderr, _ = _finish(proc)
    line = _one_error_line(stderr)
    assert code == 1 and "\x1b" not in line and "\\x1b]0;owned" in line


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_planted_part_link_is_never_written_through(aiops_home, tmp_path, stream):
    """`-o F` with `F.part` (and F itself) planted as links to a victim file: the body lands in F,
    a file of its own; the victim is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "F"
    (tmp_path / "F.part").symlink_to(victim)
    out.symlink_to(victim)
    with _escaping_server(stream) as server:
        proc = _cli(
            aiops_home,
            tmp_path,
            "invoke",
            "--url",
            server.url,
            "--data",
            "{}",
            "-o",
            str(out),
            *(["--stream"] if stream else []),
        )
        assert proc.wait(60) == 0, proc.stderr.read()
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and ESCAPES.encode() in out.read_bytes()
    assert (tmp_path / "F.part").is_symlink()  # left as it was
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's mode, not the temporary file's 0600


@pytest.mark.parametrize("how", ["flag", "env", "blank-flag"])
@pytest.mark.parametrize("command", ["serve", "invoke"])
def test_an_empty_api_key_is_refused_not_taken_as_no_auth(aiops_home, tmp_path, command, how):
    with HostileServer(lambda: iter([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])) as server:
        args = {
            "serve": ["serve", str(tmp_path), "--port", "0"],
            "invoke": ["invoke", "--url", server.url, "--data", "{}"],
        }[command]
        env = {}
        if how == "env":
            env["AIOPS_SERVE__API_KEY"] = ""
        else:
            args += ["--api-key", "" if how == "flag" else "  "]
        proc = _cli(aiops_home, tmp_path, *args, env=env)
        code, stderr, _ = _finish(proc)
    line = _one_error_line(stderr)
    assert code == 2 and "empty API key" in line, line
    assert server.requests == 0  # refused before anything was sent
