"""Files that a kill at any moment cannot tear: every file vlm-eff writes for others to read (result tables, JSON,
checkpoints, weights, figures, caches) goes through `atomic_target`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_target(path: Path, prefix: str = ".", suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` (named `<prefix><name>.*<suffix>`) for the caller to write; on leaving the
    block it is synced to disk and renamed over `path` (the rename synced too), on an error removed. Readers see
    the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.close(fd)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_atomically(path: Path, write: Callable[[BinaryIO], object], prefix: str = ".") -> None:
    """`write` fills an open binary file that becomes `path` whole (see `atomic_target`)."""
    with atomic_target(path, prefix) as tmp, open(tmp, "wb") as f:
        write(f)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one, never a part."""
    replace_atomically(path, lambda f: f.write(str.encode(text)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
