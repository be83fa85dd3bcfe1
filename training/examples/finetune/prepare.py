"""`aiops example finetune-data`: an instruction dataset made from the Python standard library's docstrings.

Each public top-level function and class of the running Python's standard library source (the
files `aiops example lm-data` reads, parsed with `ast`, never imported) with a docstring becomes
one conversation: a question about it (`What does the Python function json.dumps(obj, ...) do?`,
in one of a few phrasings) and, as the answer, the first paragraph of its docstring.

The channels hold `data.jsonl`, one conversation a line, in the conversational format of the
Hugging Face chat templates and TRL's `SFTTrainer`:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

The same Python version and seed give byte-identical files.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import random
import re
import sys
import sysconfig
from pathlib import Path

from aiops.errors import UsageError

CHANNELS = ("train", "test")
FILE_NAME = "data.jsonl"
MAX_ANSWER_CHARS = 300
MIN_ANSWER_CHARS = 20
MAX_SIGNATURE_CHARS = 60
FUNCTION_QUESTIONS = (
    "What does the Python function `{qualified}{signature}` do?",
    "Explain `{qualified}` from the Python standard library in one or two sentences.",
    "In Python's `{module}` module, what is the function `{name}` for?",
)
CLASS_QUESTIONS = (
    "What is the Python class `{qualified}`?",
    "Explain the class `{name}` of Python's `{module}` module.",
    "What is `{qualified}` in the Python standard library for?",
)


def first_paragraph(docstring: str, name: str = "") -> str:
    """The docstring's first paragraph on one line (after a leading `name(...)` signature line, as
    older docstrings have), cut at a sentence end near MAX_ANSWER_CHARS."""
    paragraphs = [p for p in inspect.cleandoc(docstring).split("\n\n") if p.strip()] or [""]
    if name and len(paragraphs) > 1 and paragraphs[0].startswith(f"{name}("):
        paragraphs = paragraphs[1:]
    text = re.sub(r"\s+", " ", paragraphs[0]).strip()
    if len(text) <= MAX_ANSWER_CHARS:
        return text
    cut = text[:MAX_ANSWER_CHARS]
    end = cut.rfind(". ")
    return cut[: end + 1] if end >= MIN_ANSWER_CHARS else cut.rsplit(" ", 1)[0] + " ..."


def module_name(relative: str) -> str:
    parts = relative[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def documented_names(source: str, module: str) -> list[dict]:
    """The public top-level functions and classes of one module that have a usable docstring."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a file for another Python version, or not text
        return []
    found = []
    for node in tree.body:
        if not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ) or node.name.startswith("_"):
            continue
        docstring = ast.get_docstring(node, clean=False)
        if not docstring:
            continue
        answer = first_paragraph(docstring, node.name)
        if len(answer) < MIN_ANSWER_CHARS:
            continue
        signature = ""
        if not isinstance(node, ast.ClassDef):
            signature = f"({ast.unparse(node.args)})"
            if len(signature) > MAX_SIGNATURE_CHARS:
                signature = "(...)"
        found.append(
            {
                "module": module,
                "name": node.name,
                "qualified": f"{module}.{node.name}",
                "signature": signature,
                "kind": "class" if isinstance(node, ast.ClassDef) else "function",
                "answer": answer,
            }
        )
    return found


def conversations(seed: int = 0, root: str | None = None) -> list[dict]:
    """Every documented name as one conversation, in a seeded order."""
    from aiops.training.examples.lm.prepare import corpus_files

    base = Path(root or sysconfig.get_paths()["stdlib"])
    items: dict[str, dict] = {}
    for file in corpus_files(str(base)):
        module = module_name(file.relative_to(base).as_posix())
        for item in documented_names(file.read_text(encoding="utf-8", errors="replace"), module):
            items.setdefault(item["qualified"], item)
    rng = random.Random(seed)
    order = sorted(items)
    rng.shuffle(order)
    out = []
    for qualified in order:
        item = items[qualified]
        questions = CLASS_QUESTIONS if item["kind"] == "class" else FUNCTION_QUESTIONS
        question = rng.choice(questions).format(**item)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": item["answer"]},
                ]
            }
        )
    return out


def write_channels(
    out_dir: str | os.PathLike[str],
    *,
    test_fraction: float = 0.1,
    max_samples: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> dict:
    """Write `out_dir/train/data.jsonl` and `out_dir/test/data.jsonl`; return a summary per channel.
    Only those two files are (over)written; anything else in `out_dir` is left alone."""
    if not 0 < test_fraction < 1:
        raise UsageError(f"--test-fraction {test_fraction}: must be between 0 and 1.")
    if max_samples is not None and max_samples < 2:
        raise UsageError(f"--max-samples {max_samples}: needs at least 2 (one for each channel).")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder; pass a folder path for the channels.")
    samples = conversations(seed, root)
    if max_samples is not None:
        samples = samples[:max_samples]
    if len(samples) < 2:
        raise UsageError(
            f"found {len(samples)} documented function(s) under {root or sysconfig.get_paths()['stdlib']}; "
            "the dataset needs the standard library's source."
        )
    test_count = min(len(samples) - 1, max(1, round(len(samples) * test_fraction)))
    split = {"test": samples[:test_count], "train": samples[test_count:]}
    source = {"corpus": "python-stdlib-docstrings", "python": sys.version.split()[0], "seed": seed}
    summary = {}
    for name in CHANNELS:
        path = out / name / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in split[name])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, path)
        summary[name] = {
            "samples": len(split[name]),
            "path": str(path),
            "sha256": hashlib.sha256(body.encode()).hexdigest(),
            **source,
        }
    return summary
