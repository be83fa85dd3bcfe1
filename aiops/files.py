"""The one file-selection policy: which files of a folder leave the user's tree.

Used for the local run's code snapshot, the remote ``sourcedir.tar.gz``, the model package's
``code/`` (``select``), and for model folders (``select_model_folder``): what ``aiops model
package`` packs, what ``aiops deploy --model FOLDER`` uploads, what the GPU-fit check reads. So a
local run, a remote job and an endpoint all see the same files.

- VCS data, caches, virtualenvs and aiops' own state are always left out;
- ``.gitignore`` and ``.aiopsignore`` at the root apply (gitignore syntax, via pathspec); a model
  folder reads ``.aiopsignore`` only (weights are often git-ignored);
- likely secrets (``SECRET_PATTERNS``: ``.env``, ``.env.*``, ``.aws/``, ``*.pem``, ``*.key``,
  ``id_*``, ``.netrc``, ``.pypirc``, ``.npmrc``, ``.git-credentials``, gcloud's
  ``application_default_credentials.json``, ``credentials.json``) are left out with a warning; a
  ``!pattern`` in ``.aiopsignore`` takes one back in on purpose;
- a symlink whose target lies outside the root is refused (UsageError, one line) unless the caller
  passes ``follow_symlinks=True``; links inside the root are followed (their content is copied);
  dangling links are skipped with a warning. One layout is inside by construction: the Hugging
  Face cache's ``snapshots/<revision>/`` folder, whose files link to ``../../blobs/`` of the same
  repository (pointing at the repository folder itself, ``blobs/`` is inside it anyway).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiops.errors import UsageError

ALWAYS_EXCLUDED = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".aiops/",
    ".venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ipynb_checkpoints/",
    ".DS_Store",
)
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    ".aws/",
    "*.pem",
    "*.key",
    "id_*",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    "application_default_credentials.json",
    "credentials.json",
)
IGNORE_FILES = (".gitignore", ".aiopsignore")
MODEL_IGNORE_FILES = (".aiopsignore",)


@dataclass
class Selection:
    """The files chosen under ``root``: relative POSIX path -> the file to read (links resolved)."""

    root: Path
    entries: dict[str, Path]
    warnings: list[str] = field(default_factory=list)
    secrets_excluded: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return sorted(self.entries)

    def copy_to(self, dest: Path) -> None:
        """Materialise the selection under ``dest`` (regular files; links become copies)."""
        for rel in self.files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.entries[rel], target)


def _spec(lines: Iterable[str]):
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _hf_blobs(real_root: Path) -> Path | None:
    """``<repo>/blobs`` when ``real_root`` is a Hugging Face cache snapshot, ``<repo>/snapshots/<rev>``."""
    if real_root.parent.name == "snapshots" and (real_root.parent.parent / "blobs").is_dir():
        return real_root.parent.parent / "blobs"
    return None


def select(
    root: Path,
    *,
    follow_symlinks: bool = False,
    ignore_files: bool | tuple[str, ...] = True,
    exclude_secrets: bool = True,
    exclude_paths: Iterable[Path] = (),
    what: str = "source dir",
    follow_flag: str | None = "--follow-symlinks",
) -> Selection:
    """Select the files under ``root`` by the policy above. ``what`` names the tree in messages
    ("source dir", "channel 'train'"); ``exclude_paths`` are folders never entered (the runs folder);
    ``ignore_files``: True for ``IGNORE_FILES`` and the always-excluded names, a tuple for those
    files only, False for neither; ``follow_flag``: the option that follows links, named in the
    refusal (None: the command has none)."""
    root = Path(root)
    real_root = root.resolve()
    if root.is_file():
        return Selection(root=root.parent, entries={root.name: root.resolve()})
    ignore_names = IGNORE_FILES if ignore_files is True else tuple(ignore_files or ())
    lines = list(ALWAYS_EXCLUDED) if ignore_files else []
    secret_spec = _spec(SECRET_PATTERNS) if exclude_secrets else None
    if exclude_secrets:
        lines += list(SECRET_PATTERNS)
    for name in ignore_names:
        path = root / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    spec = _spec(lines)
    skip = {Path(p).resolve() for p in exclude_paths}
    selection = Selection(root=root, entries={})
    blobs = _hf_blobs(real_root)

    def refuse(rel: str, target: Path) -> None:
        fix = "Copy what it points to into the folder or remove the link" + (
            f", or pass {follow_flag}." if follow_flag else "."
        )
        raise UsageError(
            f"{what} {root}: {rel} is a symlink to {target}, outside the {what}; nothing outside it is "
            f"shipped. {fix}"
        )

    def walk(folder: Path, rel_folder: str, seen: frozenset[Path]) -> None:
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise UsageError(f"{what} {root}: cannot read {folder} ({err.strerror}).") from None
        for entry in children:
            rel = f"{rel_folder}{entry.name}"
            path = Path(entry.path)
            is_link = entry.is_symlink()
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if spec.match_file(rel + "/" if is_dir else rel):
                if secret_spec is not None and secret_spec.match_file(rel + "/" if is_dir else rel):
                    selection.secrets_excluded.append(rel + ("/" if is_dir else ""))
                continue
            real = path.resolve()
            if real in skip:
                continue
            if is_link:
                if not real.exists():
                    selection.warnings.append(f"{what} {root}: {rel} is a dangling symlink; left out.")
                    continue
                in_blobs = blobs is not None and real.parent == blobs and real.is_file()
                if not _inside(real, real_root) and not in_blobs and not follow_symlinks:
                    refuse(rel, real)
            if is_dir:
                if real in seen:  # a link back to a folder being walked: a cycle
                    selection.warnings.append(
                        f"{what} {root}: {rel} links back to {real}; not entered twice."
                    )
                    continue
                walk(path, rel + "/", seen | {real})
            elif real.is_file():
                selection.entries[rel] = real if is_link else path

    walk(root, "", frozenset({real_root}))
    if selection.secrets_excluded:
        selection.warnings.append(
            f"left out of the {what} as likely secrets: {', '.join(selection.secrets_excluded)} "
            "(secrets belong in AWS Secrets Manager or environment variables; add '!NAME' to .aiopsignore "
            "to ship one anyway)."
        )
    return selection


def select_model_folder(root: Path, *, what: str = "model folder") -> Selection:
    """The files of a model folder (``model package``, ``deploy --model FOLDER``, the GPU-fit
    check): the policy above with ``.aiopsignore`` only (no ``.gitignore``), secrets left out with a
    warning, and no link out of the folder (no flag follows one)."""
    return select(root, ignore_files=MODEL_IGNORE_FILES, what=what, follow_flag=None)
