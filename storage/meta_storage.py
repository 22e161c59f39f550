"""`FileMetaStorage`: the durable (current_term, voted_for, cluster_id) of a Raft peer.

File format: a framed record (storage/framed.py) with magic b"PKRFTMET" and the body
{"term": int >= 0, "voted_for": str | None, "cluster_id": str}. A body without "cluster_id"
(written before clusters had an identity) reads as "" (unknown).

The cluster id is set once (bootstrap, or adoption from the first leader of a joining peer:
actors/identity.py) and never changes afterwards.

Every write replaces the whole file atomically (temp file, fsync, rename, fsync the directory),
so after a crash the file holds the old or the new pair, never a mix; a leftover temp file is
ignored. A missing file means a fresh peer: term 0, no vote, no cluster id.

Not thread-safe: the LogManager actor is the only owner.
"""

from __future__ import annotations

from pathlib import Path

from storage._fileutil import TMP_SUFFIX, atomic_write, ensure_dir, read_file
from storage.errors import CorruptMetaError, StorageError
from storage.framed import HEADER, decode_framed, encode_framed

META_MAGIC = b"PKRFTMET"


MAX_CLUSTER_ID = 64  # characters; ids this project makes have 16


def encode_meta(term: int, voted_for: str | None, cluster_id: str = "") -> bytes:
    body = {"term": term, "voted_for": voted_for, "cluster_id": cluster_id}
    return encode_framed(META_MAGIC, body)


def decode_meta(data: bytes, path: Path) -> tuple[int, str | None, str]:
    """(term, voted_for, cluster_id) from a meta file's content; CorruptMetaError if it is not
    valid."""
    where = str(path)
    decoded = decode_framed(data, META_MAGIC, CorruptMetaError, "meta file", where)
    term = decoded.get("term")
    voted_for = decoded.get("voted_for")
    cluster_id = decoded.get("cluster_id", "")
    if (
        type(term) is not int
        or term < 0
        or not (voted_for is None or isinstance(voted_for, str))
        or not check_cluster_id(cluster_id)
    ):
        raise CorruptMetaError(f"meta body has bad fields: {decoded!r}", where, HEADER.size)
    return term, voted_for, cluster_id


def check_cluster_id(cluster_id: object) -> bool:
    """A valid stored cluster id: a str of at most MAX_CLUSTER_ID characters ("" = unknown)."""
    return isinstance(cluster_id, str) and len(cluster_id) <= MAX_CLUSTER_ID


def validate_new_cluster_id(current: str, cluster_id: str) -> None:
    """ValueError unless `cluster_id` may be recorded where `current` is: a non-empty valid id,
    over no id or the same one (an identity never changes)."""
    if not cluster_id or not check_cluster_id(cluster_id):
        raise ValueError(f"a cluster id is 1..{MAX_CLUSTER_ID} characters, not {cluster_id!r}")
    if current not in ("", cluster_id):
        raise ValueError(f"this peer belongs to cluster {current}, not {cluster_id}")


class FileMetaStorage:
    """MetaStorage in one small file at `path` (its directory is created if missing).

    set_term_and_vote and set_cluster_id return once the record is durable; writing what it
    already holds is a no-op (it is already durable).
    """

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        ensure_dir(self._path.parent)
        self._closed = False
        tmp = self._path.with_name(self._path.name + TMP_SUFFIX)
        tmp.unlink(missing_ok=True)  # a write that crashed before its rename: never happened
        data = read_file(self._path)
        self._term, self._voted_for, self._cluster_id = (
            (0, None, "") if data is None else decode_meta(data, self._path)
        )

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

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
        self._write(term, voted_for, self._cluster_id)

    def set_cluster_id(self, cluster_id: str) -> None:
        validate_new_cluster_id(self._cluster_id, cluster_id)
        if cluster_id != self._cluster_id:
            self._write(self._term, self._voted_for, cluster_id)

    def _write(self, term: int, voted_for: str | None, cluster_id: str) -> None:
        if self._closed:
            raise StorageError(f"meta storage {self._path} is closed")
        try:
            atomic_write(self._path, encode_meta(term, voted_for, cluster_id))
        except OSError as exc:
            raise StorageError(f"writing {self._path} failed: {exc}") from exc
        self._term, self._voted_for, self._cluster_id = term, voted_for, cluster_id

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"FileMetaStorage({str(self._path)!r}, term={self._term}, "
            f"vote={self._voted_for!r}, cluster={self._cluster_id!r})"
        )
