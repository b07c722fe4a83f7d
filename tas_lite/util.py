"""Small helpers every layer uses: console lines, progress bars, eval mode for a while, atomic writes,
writable-folder checks, and the errors every file-reading layer raises (`CorruptFile`, `NotWritable`,
`MissingDataset`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

if TYPE_CHECKING:  # for annotations only: util stays cheap to import (the command line starts with it)
    from torch import nn

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp makes 0600 files, but what we write should get the usual mode
FILE_MODE = 0o666 & ~_UMASK


class CorruptFile(ValueError):
    """A file is truncated, damaged or not what it claims to be; the message names it and how to rebuild it."""


class MissingDataset(OSError):
    """A dataset is on none of the places tas_lite looks and cannot be downloaded; the message says how to get it."""


class NotWritable(OSError):
    """A folder tas_lite must write to cannot be written; raised before any work, naming it and the fix."""


def say(enabled: bool, text: str, end: str = "\n") -> None:
    """Print one status line (flushed at once) when `enabled`; the library's only way to talk."""
    if enabled:
        print(text, end=end, flush=True)


def progress_bar(items: Iterable, *, enabled: bool, total: int | None = None, desc: str = "", unit: str = "it"):
    """`items` with a tqdm.auto bar (a widget in Jupyter, text elsewhere), or unchanged when disabled.

    The bar never touches `items` itself: it counts what the loop takes. (tqdm.auto's own wrapper calls
    `iter()` once more, which advances a DataLoader's seeded generator and so changes the data order: a
    run with a bar would then train on other batches than the same run without one.)"""
    if not enabled:
        return items
    return _Counted(items, tqdm(total=total if total is not None else getattr(items, "__len__", lambda: None)(),
                                desc=desc, unit=unit, leave=False))


class _Counted:
    """Iterate `items` once, advancing `bar` by one per item; `set_postfix` goes to the bar."""

    def __init__(self, items: Iterable, bar):
        self.items, self.bar = items, bar

    def __iter__(self):
        try:
            for item in self.items:
                yield item
                self.bar.update(1)
        finally:
            self.bar.close()

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for a block, then give each its own training mode back."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def atomic_write(path: str | Path, payload: bytes | str) -> Path:
    """Write a file so that readers see the old or the new content, never half of it (unique temp + rename),
    with the mode a plain write would give it (umask applied)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = payload.encode() if isinstance(payload, str) else payload
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path beside `path` for writers that need a file name (torch.save, safetensors);
    it replaces `path` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_writable(folder: str | Path, fix: str) -> Path:
    """Create `folder` if needed and prove it takes a new file; else NotWritable naming it and `fix`.
    Called before long work, so that a run never trains for an hour and then fails to save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tas_lite_write_check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NotWritable(f"cannot write to {folder} ({err.strerror or err}); {fix}") from err
    return folder


def read_json_object(path: Path, what: str, fix: str) -> dict:
    """The JSON object in `path`; a truncated, damaged or non-object file is a CorruptFile naming it (as
    `what`, e.g. "sidecar") and ending with `fix`."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFile(f"{what} {path} is not valid JSON ({err}): truncated or damaged; {fix}") from err
    if not isinstance(value, dict):
        raise CorruptFile(f"{what} {path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value
