"""`SegmentLogStorage`: the durable Raft log, as segment files in one directory.

Layout of the directory::

    log.meta                          first index and reset generation (atomically replaced)
    00000000000000000001.seg          segments, named by their first index (format: segment.py)
    00000000000000065537.seg
    ...

`log.meta` is a 32-byte file with the same header layout as a segment (magic b"PKRFTLMT"):
``first_index`` is the log's first index (it may lie inside the first segment, after
truncate_prefix) and ``generation`` counts resets. Every segment records the generation it was
created in; a segment of an older generation is a leftover of a reset interrupted by a crash and
is deleted at open. Ordering makes every operation crash-safe:

- append: write the batch (a batch header and its records) with one pwrite, then one
  fdatasync (group commit) when sync is on;
- close: with sync on, append a seal (an empty batch) to the newest segment and fdatasync it,
  so that recovery can verify every byte (segment.py);
- truncate_suffix: delete later segments (newest first), fsync the directory, then cut the
  segment holding the cut so that its format stays valid at every step (`Segment.cut_after`);
- truncate_prefix: write log.meta with the new first index, then delete segments wholly below
  it (at open, segments wholly below log.meta's first index are deleted too);
- reset: write log.meta with the new first index and generation + 1, then delete all segments.

Reads: each segment keeps an in-memory index (record offsets and terms, built at open), so
get_term is an array lookup and get_entries is one pread per segment, CRC-checked. The most
recently appended entries are also kept in a bounded in-memory cache (they are what replicators
and the state machine read next).

Recovery at open validates every batch and record. A torn final batch (its append never
returned, so it was never acknowledged; a crash may have persisted any subset of its pages) is
cut off whole with a warning; any other damage raises CorruptLogError naming the file and
offset rather than silently dropping entries that may have been acknowledged (see `recovery`
for the exact rule).

Not thread-safe: the LogManager actor is the only owner.
"""

from __future__ import annotations

import logging
import os
import re
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from storage._fileutil import (
    TMP_SUFFIX,
    atomic_write,
    ensure_dir,
    fsync_dir,
    pwrite_all,
    read_file,
)
from storage.base import check_contiguous
from storage.entry import LogEntry
from storage.errors import CorruptLogError, LogIndexError, StorageError
from storage.recovery import Tail, recover_segment
from storage.segment import (
    FILE_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEGMENT_SUFFIX,
    Segment,
    create_segment,
    decode_file_header,
    encode_batch,
    encode_file_header,
)

log = logging.getLogger(__name__)

META_NAME = "log.meta"
META_MAGIC = b"PKRFTLMT"
_SEGMENT_RE = re.compile(r"^\d{20}" + re.escape(SEGMENT_SUFFIX) + "$")

MiB = 1024 * 1024


class SegmentLogStorage:
    """LogStorage on disk (see the module docstring for the format and crash behaviour).

    path: the log's directory, created if missing; nothing else should write there.
    segment_size: a new segment is started once the current one reaches this many bytes (a
        batch is never split, so a segment may exceed it by one batch).
    sync: when True every append_entries is durable on return (one fdatasync per batch). When
        False, appends are durable only after `sync()`; truncations are always durable. It
        also sets how strict recovery is: reopen a log that crashed with sync off with sync
        off too, or recovery may refuse its unsynced tail (see `recovery`).
    cache_max_entries / cache_max_bytes: bound the cache of recently appended entries.
    max_open_files: descriptors kept open for older segments (the newest one is always open).
    """

    def __init__(
        self,
        path: str | Path,
        segment_size: int = 8 * MiB,
        sync: bool = True,
        *,
        cache_max_entries: int = 4096,
        cache_max_bytes: int = 8 * MiB,
        max_open_files: int = 16,
    ) -> None:
        if segment_size <= 0 or max_open_files <= 0:
            raise ValueError("segment_size and max_open_files must be positive")
        self._dir = Path(path)
        self._segment_size = segment_size
        self._sync = sync
        self._cache_max_entries = cache_max_entries
        self._cache_max_bytes = cache_max_bytes
        self._max_open_files = max_open_files
        # Invariant: segments are sorted and contiguous (segments[i+1].first_index ==
        # segments[i].last_index + 1), the first one starts at or below _first (below it after
        # truncate_prefix) and the last one ends at _last; no segment but the last ends below
        # _first. Empty when the log is empty after reset. _seg_firsts mirrors their first
        # indexes, for bisect.
        self._segments: list[Segment] = []
        self._seg_firsts: list[int] = []
        # Older segments with an open fd, least recently used first; the last segment's fd
        # stays open and is never in here.
        self._open_fds: OrderedDict[int, Segment] = OrderedDict()
        self._first = 1
        self._last = 0
        self._generation = 0
        # Invariant: _cache holds exactly the entries _cache_first.._last, and
        # _first <= _cache_first <= _last + 1.
        self._cache: list[LogEntry] = []
        self._cache_first = 1
        self._cache_bytes = 0
        self._unsynced = False  # appended data not yet fdatasynced (only when sync is off)
        self._closed = False
        # Set when an fsync failed: the file's durable content is then unknown, so the only
        # safe course is to stop using this log (the process should restart and recover).
        self._failed: BaseException | None = None
        self._open()

    # ---- opening and recovery -------------------------------------------------------------

    def _open(self) -> None:
        ensure_dir(self._dir)
        for leftover in self._dir.glob("*" + TMP_SUFFIX):
            leftover.unlink()  # an interrupted atomic write or segment creation
        paths = sorted(p for p in self._dir.iterdir() if _SEGMENT_RE.match(p.name))
        meta_path = self._dir / META_NAME
        meta = read_file(meta_path)
        if meta is None:
            if paths:
                raise CorruptLogError(f"{META_NAME} is missing but segments exist", str(meta_path))
            self._write_meta(1, 0)
            meta = read_file(meta_path) or b""
        first, generation = decode_file_header(META_MAGIC, meta, meta_path)
        self._first, self._generation = first, generation

        # Pass 1: headers. Segments of an older generation are leftovers of an interrupted
        # reset; the rest must be this generation and named after their first index.
        current: list[tuple[Path, int]] = []
        deleted = False
        for path in paths:
            with open(path, "rb") as f:
                head = f.read(FILE_HEADER_SIZE)
            seg_first, seg_gen = decode_file_header(SEGMENT_MAGIC, head, path)
            if seg_first != int(path.name[: -len(SEGMENT_SUFFIX)]):
                raise CorruptLogError(f"header says first index {seg_first}", str(path), 0)
            if seg_gen > generation:
                raise CorruptLogError(f"segment generation {seg_gen} > {generation}", str(path), 0)
            if seg_gen < generation:
                log.info("deleting %s, left over from an interrupted reset", path)
                path.unlink()
                deleted = True
            else:
                current.append((path, seg_first))

        # Pass 2: batches and records. Only the newest segment may have a torn final batch.
        segments: list[Segment] = []
        newest_tail = Tail.LAST_BATCH if self._sync else Tail.UNSYNCED
        for path, seg_first in current:
            if segments and seg_first != segments[-1].last_index + 1:
                raise CorruptLogError(
                    f"index gap: segment starts at {seg_first}, expected "
                    f"{segments[-1].last_index + 1}",
                    str(path),
                    0,
                )
            tail = newest_tail if path == current[-1][0] else Tail.SEALED
            segments.append(recover_segment(path, seg_first, generation, tail))

        # Segments wholly below the first index: left by an interrupted truncate_prefix (or
        # holding only unsynced entries lost in a crash).
        while segments and segments[0].last_index < first:
            log.info("deleting %s, wholly below the first index %d", segments[0].path, first)
            segments.pop(0).path.unlink()
            deleted = True
        if deleted:
            fsync_dir(self._dir)
        if segments and segments[0].first_index > first:
            raise CorruptLogError(
                f"index gap: the first index is {first} but the first segment starts at "
                f"{segments[0].first_index}",
                str(segments[0].path),
                0,
            )
        self._segments = segments
        self._seg_firsts = [s.first_index for s in segments]
        self._last = segments[-1].last_index if segments else first - 1
        self._cache_first = self._last + 1
        if segments:
            segments[-1].fd = os.open(segments[-1].path, os.O_RDWR)

    def _write_meta(self, first: int, generation: int) -> None:
        atomic_write(self._dir / META_NAME, encode_file_header(META_MAGIC, first, generation))

    # ---- the LogStorage protocol ----------------------------------------------------------

    def first_log_index(self) -> int:
        return self._first

    def last_log_index(self) -> int:
        return self._last

    def get_entry(self, index: int) -> LogEntry | None:
        if self._closed:
            self._check_usable()
        if index >= self._cache_first:
            if index <= self._last:
                return self._cache[index - self._cache_first]
            return None
        if index < self._first:
            return None
        self._check_usable()
        seg = self._segment_of(index)
        return seg.read(self._fd(seg), index, index)[0]

    def get_term(self, index: int) -> int:
        if index >= self._cache_first:
            if index <= self._last:
                return self._cache[index - self._cache_first].term
            return 0
        if index < self._first:
            return 0
        seg = self._segment_of(index)
        return seg.terms[index - seg.first_index]

    def get_entries(self, first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        if self._closed:
            self._check_usable()
        lo = max(first, self._first)
        hi = min(last, self._last)
        if lo > hi:
            return []
        cache_first = self._cache_first
        if lo >= cache_first and max_bytes <= 0:
            return self._cache[lo - cache_first : hi - cache_first + 1]
        self._check_usable()
        out: list[LogEntry] = []
        taken = 0  # payload bytes in `out`
        index = lo
        # Older entries: from the segments, one pread per segment, sized by the offset index.
        while index <= hi and index < cache_first:
            seg = self._segment_of(index)
            stop = min(hi, seg.last_index, cache_first - 1)
            if max_bytes > 0:
                for i in range(index, stop + 1):
                    size = seg.payload_size(i - seg.first_index)
                    if taken + size > max_bytes and (out or i > index):
                        stop = i - 1
                        break
                    taken += size
            if stop >= index:
                out.extend(seg.read(self._fd(seg), index, stop))
            if stop < min(hi, seg.last_index, cache_first - 1):
                return out  # the byte budget is spent
            index = stop + 1
        # Recent entries: from the cache.
        if index <= hi:
            recent = self._cache[index - cache_first : hi - cache_first + 1]
            if max_bytes > 0:
                for n, entry in enumerate(recent):
                    taken += len(entry.data)
                    if taken > max_bytes and (out or n > 0):
                        recent = recent[:n]
                        break
            out.extend(recent)
        return out

    def append_entries(self, entries: Sequence[LogEntry]) -> None:
        self._check_usable()
        if not entries:
            return
        check_contiguous(entries, self._last + 1, f"{self._first}..{self._last}")
        seg = self._segment_for_append()
        assert seg.fd is not None
        old_size, old_count = seg.size, len(seg.offsets)
        data = encode_batch(entries, old_size, seg.offsets, seg.terms)
        try:
            pwrite_all(seg.fd, data, old_size)
        except OSError as exc:
            # Undo: nothing of this batch may remain, in the file or in the index.
            del seg.offsets[old_count:], seg.terms[old_count:]
            try:
                os.ftruncate(seg.fd, old_size)
            except OSError as undo_exc:
                self._failed = undo_exc
            raise StorageError(f"append to {seg.path} failed: {exc}") from exc
        seg.add_batch(old_size, entries[0].index, old_size + len(data))
        self._last = entries[-1].index
        if self._sync:
            self._fdatasync(seg)
        else:
            self._unsynced = True
        self._cache_append(entries)

    def truncate_suffix(self, last_index_kept: int) -> None:
        self._check_usable()
        if last_index_kept >= self._last:
            return
        if last_index_kept < self._first - 1:
            raise LogIndexError(
                f"truncate_suffix({last_index_kept}) would cut below the first index {self._first}"
            )
        # Whole segments after the cut go first, newest first: every intermediate state on
        # disk is a contiguous log.
        with self._fail_on_oserror("truncate_suffix"):
            dropped = False
            while len(self._segments) > 1 and self._segments[-1].first_index > last_index_kept:
                self._delete_segment(self._segments.pop())
                self._seg_firsts.pop()
                dropped = True
            if dropped:
                fsync_dir(self._dir)
            seg = self._segments[-1]
            self._open_fds.pop(id(seg), None)  # it is the newest segment now
            if seg.fd is None:
                seg.fd = os.open(seg.path, os.O_RDWR)
            seg.cut_after(last_index_kept)
        self._unsynced = False
        self._last = last_index_kept
        if last_index_kept + 1 < self._cache_first:
            self._cache_clear(last_index_kept + 1)
        else:
            cut = last_index_kept + 1 - self._cache_first
            self._cache_bytes -= sum(len(e.data) for e in self._cache[cut:])
            del self._cache[cut:]

    def truncate_prefix(self, first_index_kept: int) -> None:
        self._check_usable()
        if first_index_kept <= self._first:
            return
        if first_index_kept > self._last:
            self.reset(first_index_kept)  # nothing is kept
            return
        with self._fail_on_oserror("truncate_prefix"):
            # Durable first: afterwards every segment wholly below is garbage, here or at open.
            self._write_meta(first_index_kept, self._generation)
            self._first = first_index_kept
            dropped = False
            # The last segment always stays: it holds self._last >= first_index_kept.
            while len(self._segments) > 1 and self._segments[1].first_index <= first_index_kept:
                self._delete_segment(self._segments.pop(0))
                self._seg_firsts.pop(0)
                dropped = True
            if dropped:
                fsync_dir(self._dir)
        if self._cache_first < first_index_kept:
            cut = first_index_kept - self._cache_first
            self._cache_bytes -= sum(len(e.data) for e in self._cache[:cut])
            del self._cache[:cut]
            self._cache_first = first_index_kept

    def reset(self, next_log_index: int) -> None:
        self._check_usable()
        if next_log_index < 1:
            raise LogIndexError(f"reset({next_log_index}): indexes start at 1")
        # Durable first: a new generation makes every existing segment garbage, even if the
        # deletions below are interrupted by a crash.
        with self._fail_on_oserror("reset"):
            self._write_meta(next_log_index, self._generation + 1)
            self._generation += 1
            while self._segments:
                self._delete_segment(self._segments.pop())
                self._seg_firsts.pop()
            fsync_dir(self._dir)
        self._first = next_log_index
        self._last = next_log_index - 1
        self._unsynced = False
        self._cache_clear(next_log_index)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._sync and self._failed is None and self._segments and self._segments[-1].unsealed:
            self._seal(self._segments[-1])
        for seg in self._segments:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        self._open_fds.clear()

    # ---- beyond the protocol --------------------------------------------------------------

    def sync(self) -> None:
        """Make every appended entry durable (for sync=False; a no-op when nothing is pending)."""
        self._check_usable()
        if self._unsynced and self._segments:
            self._fdatasync(self._segments[-1])

    flush = sync  # an alias: the same name as the in-memory twin offers

    @property
    def path(self) -> Path:
        return self._dir

    def __repr__(self) -> str:
        return (
            f"SegmentLogStorage({str(self._dir)!r}, {self._first}..{self._last}, "
            f"{len(self._segments)} segments)"
        )

    # ---- internals ------------------------------------------------------------------------

    @contextmanager
    def _fail_on_oserror(self, operation: str) -> Iterator[None]:
        """Turn an OSError into StorageError and stop using the log: the operation may have
        been half done on disk, and recovery at the next open knows how to finish it."""
        try:
            yield
        except OSError as exc:
            self._failed = exc
            raise StorageError(f"{operation} in {self._dir} failed: {exc}") from exc

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"log storage {self._dir} is closed")
        if self._failed is not None:
            raise StorageError(f"log storage {self._dir} failed earlier: {self._failed}")

    def _segment_of(self, index: int) -> Segment:
        """The segment holding `index`, which must be within first..last."""
        segments = self._segments
        if index >= segments[-1].first_index:
            return segments[-1]
        return segments[bisect_right(self._seg_firsts, index) - 1]

    def _fd(self, seg: Segment) -> int:
        """An open descriptor for `seg`, opening it (and closing the least recently used older
        segment's) when needed."""
        if seg is self._segments[-1]:
            assert seg.fd is not None
            return seg.fd
        key = id(seg)
        if seg.fd is not None:
            self._open_fds.move_to_end(key)
            return seg.fd
        seg.fd = os.open(seg.path, os.O_RDWR)
        self._open_fds[key] = seg
        if len(self._open_fds) > self._max_open_files:
            _, evicted = self._open_fds.popitem(last=False)
            if evicted.fd is not None:
                os.close(evicted.fd)
                evicted.fd = None
        return seg.fd

    def _segment_for_append(self) -> Segment:
        """The segment the next batch goes to, starting a new one when the newest is full."""
        if self._segments:
            seg = self._segments[-1]
            if seg.size < self._segment_size or not seg.offsets:
                return seg
            # Seal it: a sealed segment must be wholly durable before a newer one exists,
            # because recovery treats any damage in a sealed segment as corruption.
            if self._unsynced:
                self._fdatasync(seg)
            self._open_fds[id(seg)] = seg
        try:
            seg = create_segment(self._dir, self._last + 1, self._generation)
        except OSError as exc:
            # Nothing changed in memory; a half-made file is replaced by the next attempt.
            raise StorageError(f"creating a segment in {self._dir} failed: {exc}") from exc
        self._segments.append(seg)
        self._seg_firsts.append(seg.first_index)
        return seg

    def _fdatasync(self, seg: Segment) -> None:
        assert seg.fd is not None
        try:
            os.fdatasync(seg.fd)
        except OSError as exc:
            # After a failed fsync the kernel may have dropped the dirty pages: what is on disk
            # is unknown, and retrying could falsely report success.
            self._failed = exc
            raise StorageError(f"fdatasync of {seg.path} failed: {exc}") from exc
        self._unsynced = False

    def _seal(self, seg: Segment) -> None:
        """Append a seal to the newest segment and fdatasync it: after it, recovery knows that
        every batch before it was synced, so it refuses damage in any of them."""
        try:
            seg.append_seal()
            assert seg.fd is not None
            os.fdatasync(seg.fd)
        except OSError as exc:
            # Nothing is lost: every batch was synced when its append returned. The next open
            # treats the last batch as possibly torn, as after a crash.
            log.warning("could not seal %s at close: %s", seg.path, exc)

    def _delete_segment(self, seg: Segment) -> None:
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        self._open_fds.pop(id(seg), None)
        seg.path.unlink()

    def _cache_append(self, entries: Sequence[LogEntry]) -> None:
        cache = self._cache
        cache.extend(entries)
        self._cache_bytes += sum(len(e.data) for e in entries)
        drop = max(len(cache) - self._cache_max_entries, 0)
        nbytes = self._cache_bytes - sum(len(cache[i].data) for i in range(drop))
        while nbytes > self._cache_max_bytes and drop < len(cache):
            nbytes -= len(cache[drop].data)
            drop += 1
        if drop:
            del cache[:drop]
            self._cache_first += drop
            self._cache_bytes = nbytes

    def _cache_clear(self, cache_first: int) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_first = cache_first
