"""The stack file, ``Pulumi.<stack>.yaml``: where it is, reading and validating it
(``load_stack_file``, for the offline preview and the commands), and setting one key in it in place
with every other line kept (``set_max_rps_per_instance``, for ``aiops bench --write-stack``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiops.infra.config import NAMESPACE, StackConfig, parse

from aiops.errors import ConfigError


def stack_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


MAX_RPS_KEY = ("config", f"{NAMESPACE}:endpoint", "autoscaling", "maxRpsPerInstance")


def set_max_rps_per_instance(path: Path, value: float, *, write: bool = True) -> list[str]:
    """Set ``aiops:endpoint.autoscaling.maxRpsPerInstance`` in a stack file, every other line kept as it
    is (comments, order, quoting): PyYAML cannot write comments back, so the one line is edited (or
    added under its parent) and the result is read back and must equal the file's data with only that
    key changed, and validate. ``write=False`` checks all of it and writes nothing (before a benchmark
    runs). Returns warnings: the settings under which the key does not drive the scaling."""
    path = Path(path)
    stack = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
    text = _read_stack_text(path)
    doc = _yaml_doc(path, text)
    endpoint = doc["config"].get(MAX_RPS_KEY[1])
    if not isinstance(endpoint, dict):
        raise ConfigError(f"{path}: no {MAX_RPS_KEY[1]} section; the stack declares no endpoint to scale")
    scaling = endpoint.get("autoscaling") or {}
    if isinstance(scaling, dict) and scaling.get("targetInvocationsPerInstance") is not None:
        raise ConfigError(
            f"{path}: {MAX_RPS_KEY[1]}.autoscaling.targetInvocationsPerInstance is set and takes precedence "
            "over maxRpsPerInstance; remove it to scale on the measured maxRpsPerInstance"
        )
    number: float | int = int(value) if float(value).is_integer() else float(value)
    edited = _set_block_value(text, MAX_RPS_KEY, _yaml_scalar(number))
    expected = _with_value(doc, MAX_RPS_KEY, number)
    if edited is None or _yaml_doc(path, edited) != expected:
        raise ConfigError(
            f"{path}: cannot edit {MAX_RPS_KEY[1]}.autoscaling.maxRpsPerInstance in place (the file is "
            f"not in plain block style there); set it by hand to {number}"
        )
    cfg = parse(expected["config"], stack=stack.group(1) if stack else path.stem, source=path.name)
    if write:
        _replace_text(path, edited)
    return _scaling_warnings(cfg)


def _read_stack_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file; create it (see Pulumi.dev.yaml) or pick --stack")
    try:
        return path.read_bytes().decode("utf-8")  # as it is: CRLF line ends stay
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None


def _yaml_doc(path: Path, text: str) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed stack file: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(f"{path}: malformed stack file: expected a mapping with a 'config:' mapping")
    return doc


def _yaml_scalar(value: float | int) -> str:
    import yaml

    return yaml.safe_dump(value).splitlines()[0]


def _with_value(doc: dict, keys: tuple[str, ...], value: Any) -> dict:
    import copy

    out = copy.deepcopy(doc)
    node = out
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return out


_COMMENT_OR_BLANK = re.compile(r"\s*(#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _key_line(line: str, key: str) -> re.Match | None:
    """``key:`` (plain or quoted) at the start of a block mapping line; group 1: what follows the colon
    up to the line end."""
    quoted = "|".join(re.escape(q) for q in (key, f'"{key}"', f"'{key}'"))
    return re.fullmatch(rf" *(?:{quoted}):( .*|)", line.rstrip("\r\n"))


def _set_block_value(text: str, keys: tuple[str, ...], scalar: str) -> str | None:
    """``text`` with the scalar at ``keys`` set to ``scalar`` (the line replaced, its comment kept), or
    the missing keys added at the end of the deepest block that exists; None when the path is not
    plain block mappings."""
    lines = text.splitlines(keepends=True)
    nl = "\r\n" if "\r\n" in text else "\n"  # added lines end as the file's do
    start, end, parent_indent = 0, len(lines), -1
    for depth, key in enumerate(keys):
        content = [i for i in range(start, end) if not _COMMENT_OR_BLANK.match(lines[i])]
        if not content:
            child_indent = parent_indent + 2
        else:
            child_indent = _indent(lines[content[0]])
            if child_indent <= parent_indent:
                return None
        found = None
        for i in content:
            if _indent(lines[i]) == child_indent and _key_line(lines[i], key):
                found = i
                break
        if found is None:
            step = 2 if parent_indent < 0 else max(child_indent - parent_indent, 1)
            at = (content[-1] + 1) if content else start
            if at == len(lines) and lines and not lines[-1].endswith("\n"):
                lines[-1] += nl
            added = []
            for n, name in enumerate(keys[depth:]):
                pad = " " * (child_indent + n * step)
                last = depth + n == len(keys) - 1
                added.append(f"{pad}{name}: {scalar}{nl}" if last else f"{pad}{name}:{nl}")
            lines[at:at] = added
            return "".join(lines)
        line = lines[found]
        if depth == len(keys) - 1:
            rest = _key_line(line, key).group(1)  # type: ignore[union-attr]
            comment = re.search(r"\s+#.*$", rest)
            bare = line.rstrip("\r\n")
            head, ending = bare[: len(bare) - len(rest)], line[len(bare) :]
            lines[found] = f"{head} {scalar}{comment.group(0) if comment else ''}{ending or nl}"
            return "".join(lines)
        if not _COMMENT_OR_BLANK.match(_key_line(line, key).group(1) or ""):  # type: ignore[union-attr]
            return None  # an inline value (a flow mapping, an anchor): not a block to descend into
        parent_indent = child_indent
        start = found + 1
        end = next(
            (
                i
                for i in range(start, end)
                if not _COMMENT_OR_BLANK.match(lines[i]) and _indent(lines[i]) <= parent_indent
            ),
            end,
        )
    return None


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` over ``path`` through a temporary file beside it (same mode), renamed over it."""
    import os
    import tempfile

    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _scaling_warnings(cfg: StackConfig) -> list[str]:
    ep = cfg.endpoint
    where = f"{NAMESPACE}:endpoint"
    if not ep.enabled:
        return [f"{where}.enabled is false: no endpoint, so nothing scales on maxRpsPerInstance"]
    if ep.inference_components.enabled:
        return [
            f"{where}.inferenceComponents is on: its copies scale on their own policy, "
            "not on maxRpsPerInstance"
        ]
    if ep.async_inference.enabled:
        return [f"{where}.asyncInference is on: it scales on its queue backlog, not on maxRpsPerInstance"]
    if ep.serverless.enabled:
        return [f"{where}.serverless is on: SageMaker scales it, maxRpsPerInstance is not used"]
    if not ep.autoscaling.enabled:
        return [f"{where}.autoscaling.enabled is false: maxRpsPerInstance is recorded but drives no scaling"]
    return []


def _apply_override(config: dict[str, Any], dotted: str, value: Any) -> None:
    top, _, rest = dotted.partition(".")
    if not rest:
        config[top] = value
        return
    node = config.setdefault(top, {})
    parts = rest.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_stack_file(
    path: Path, *, stack: str | None = None, overrides: Mapping[str, Any] | None = None
) -> StackConfig:
    """Read and validate ``Pulumi.<stack>.yaml`` (the stack name is taken from the file name).

    ``overrides``: dotted keys (``aiops:endpoint.modelDataUrl``) set before validation.
    """
    import yaml

    path = Path(path)
    if stack is None:
        m = re.fullmatch(r"Pulumi\.(.+)\.ya?ml", path.name)
        stack = m.group(1) if m else path.stem
    if not path.is_file():
        raise ConfigError(f"{path}: no such stack file; create it (see Pulumi.dev.yaml) or pick --stack")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}:{line}: malformed stack file: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise ConfigError(f"{path}: malformed stack file: expected a mapping with a 'config:' mapping")
    config = doc.get("config") or {}
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raise ConfigError(f"{path}: {key} is a secret; aiops config sections hold no secrets")
    for dotted, value in (overrides or {}).items():
        _apply_override(config, dotted, value)
    return parse(config, stack=stack, source=str(path.name))
