"""Small POSIX file helpers shared by the durable storages (internal).

They exist because durability needs more than `open().write()`: a new or renamed file survives a
crash only once its *directory* is fsynced too, a write may be partial, and an atomic replace is
"write temp, fsync, rename, fsync the directory".
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make creations, renames and deletions of entries in directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create directory `path` and any missing parents, durably: a directory created here is
    fsynced into its parent, so that a crash cannot lose it (and with it a whole log)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # created concurrently; whoever did it fsyncs it
        fsync_dir(d.parent)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (os.pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly `size` bytes at `offset`; fewer only at end of file."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        chunks.append(more)
        got += len(more)
    return b"".join(chunks)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace the file at `path` with `data` so that a crash leaves either the old or the new
    content, never a mix: write `path.tmp`, fsync it, rename over `path`, fsync the directory.

    A leftover `path.tmp` from a crash before the rename is harmless: readers ignore it and the
    next write truncates it.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_file(path: Path) -> bytes | None:
    """The whole content of `path`, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
