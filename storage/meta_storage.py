"""`FileMetaStorage`: the durable (current_term, voted_for) of a Raft peer.

File format: a framed record (storage/framed.py) with magic b"PKRFTMET" and the body
{"term": int >= 0, "voted_for": str | None}.

Every write replaces the whole file atomically (temp file, fsync, rename, fsync the directory),
so after a crash the file holds the old or the new pair, never a mix; a leftover temp file is
ignored. A missing file means a fresh peer: term 0, no vote.

Not thread-safe: the LogManager actor is the only owner.
"""

from __future__ import annotations

from pathlib import Path

from storage._fileutil import TMP_SUFFIX, atomic_write, ensure_dir, read_file
from storage.errors import CorruptMetaError, StorageError
from storage.framed import HEADER, decode_framed, encode_framed

META_MAGIC = b"PKRFTMET"


def encode_meta(term: int, voted_for: str | None) -> bytes:
    return encode_framed(META_MAGIC, {"term": term, "voted_for": voted_for})


def decode_meta(data: bytes, path: Path) -> tuple[int, str | None]:
    """(term, voted_for) from a meta file's content; CorruptMetaError if it is not valid."""
    where = str(path)
    decoded = decode_framed(data, META_MAGIC, CorruptMetaError, "meta file", where)
    term = decoded.get("term")
    voted_for = decoded.get("voted_for")
    if type(term) is not int or term < 0 or not (voted_for is None or isinstance(voted_for, str)):
        raise CorruptMetaError(f"meta body has bad fields: {decoded!r}", where, HEADER.size)
    return term, voted_for


class FileMetaStorage:
    """MetaStorage in one small file at `path` (its directory is created if missing).

    set_term_and_vote returns once the pair is durable; writing the pair it already holds is a
    no-op (it is already durable).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        ensure_dir(self._path.parent)
        self._closed = False
        tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        tmp.unlink(missing_ok=True)  # a write that crashed before its rename: never happened
        data = read_file(self._path)
        self._term, self._voted_for = (0, None) if data is None else decode_meta(data, self._path)

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def path(self) -> Path:
        return self._path

    def set_term_and_vote(self, term: int, voted_for: str | None) -> None:
        if self._closed:
            raise StorageError(f"meta storage {self._path} is closed")
        if type(term) is not int or term < 0:
            raise ValueError(f"term must be a non-negative int, not {term!r}")
        if voted_for is not None and not isinstance(voted_for, str):
            raise ValueError(f"voted_for must be a str or None, not {voted_for!r}")
        if (term, voted_for) == (self._term, self._voted_for):
            return
        try:
            atomic_write(self._path, encode_meta(term, voted_for))
        except OSError as exc:
            raise StorageError(f"writing {self._path} failed: {exc}") from exc
        self._term, self._voted_for = term, voted_for

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"FileMetaStorage({str(self._path)!r}, term={self._term}, vote={self._voted_for!r})"
