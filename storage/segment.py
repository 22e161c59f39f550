"""Segment files of `SegmentLogStorage`: the on-disk format, encoding, reads and cuts.

On-disk format, version 2. All integers are little-endian.

A segment file is named ``<first index, 20 digits>.seg`` and holds a file header, then batches
back to back::

    file header (32 bytes)
      magic        8s   b"PKRFTSEG"
      version      u16  2
      reserved     u16  0
      first_index  u64  index of the file's first record; equals the number in the file name
      generation   u64  the log's reset generation when the file was created (see log_storage)
      header_crc   u32  CRC32 of the 28 bytes above
    batch: what one append_entries call wrote, with one pwrite (28-byte header, then records)
      magic        8s   b"PKRFTBAT"
      first_index  u64  index of the batch's first record (a seal: the index of the next one)
      count        u32  number of records in the batch
      length       u32  bytes of the records, which follow the header back to back
      crc          u32  CRC32 of the 24 bytes above
    record (25-byte header + payload)
      crc          u32  CRC32 (zlib) of every byte after this field: the 21 header bytes below
                        followed by the payload
      length       u32  payload length in bytes
      index        u64
      term         u64
      type         u8   EntryType value
      payload      `length` bytes

A *seal* is a batch with count 0 and length 0. With sync on, `SegmentLogStorage.close` appends
one to the newest segment (and fdatasyncs it) when records were written there after its last
seal; later appends simply follow it.

Invariants: record k (counting from 0) of a file has index first_index + k; a batch holds the
records header.first_index .. header.first_index + count - 1, and the next batch starts right
after its `length` bytes.

Why batches: with sync on, batch N+1 is written only after batch N's fdatasync returned, and a
segment is fdatasynced (sealed) before a newer one is created. So only the *last* batch of the
newest segment can be unsynced, and a crash may have persisted any subset of its pages, in any
order. A valid batch header after damage proves the damaged batch was synced (corruption:
refuse to open); damage with no valid header after it is the torn final batch, never
acknowledged, and is dropped whole (`recovery` has the exact rule). After a clean close every
byte is verifiable, because the seal is a header after the last batch. After a crash only the
very last batch is treated as possibly torn: a bit flip in it looks exactly like a torn write
and is cut off too. That ambiguity is inherent; the seal confines it to crashes.

A segment is created complete (header written to a temp file, fsynced, renamed, directory
fsynced), so a ``.seg`` file always starts with a whole header. Batches are only ever appended
at the end, or cut off at the end (`Segment.cut_after`, which keeps the format valid at every
step).
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

from storage._fileutil import TMP_SUFFIX, atomic_write, fsync_dir, pread_exact, pwrite_all
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError

SEGMENT_MAGIC = b"PKRFTSEG"
BATCH_MAGIC = b"PKRFTBAT"
FORMAT_VERSION = 2
SEGMENT_SUFFIX = ".seg"

# Fixed-size file header shared by segments and the log's meta file (different magic).
_FILE_HEADER = struct.Struct("<8sHHQQ")
_CRC = struct.Struct("<I")
FILE_HEADER_SIZE = _FILE_HEADER.size + _CRC.size  # 32

_BATCH_BODY = struct.Struct("<8sQII")  # magic, first_index, count, length: what the CRC covers
BATCH_HEADER = struct.Struct("<8sQIII")  # the same, then crc (for reading)
BATCH_HEADER_SIZE = BATCH_HEADER.size  # 28
BATCH_CRC_AT = _BATCH_BODY.size  # 24
# truncate_suffix rewrites only count, length and crc (the rest stays the same).
_BATCH_COUNTS_AT = 16
# A write inside one aligned block of this size reaches the disk whole or not at all, even on a
# power loss: a sector (PostgreSQL relies on the same for pg_control). A page is a multiple.
ATOMIC_WRITE_UNIT = 512

_REC_CRC = _CRC
_REC_BODY = struct.Struct("<IQQB")  # length, index, term, type
REC_HEADER_SIZE = _REC_CRC.size + _REC_BODY.size  # 25
RECORD_HEADER = struct.Struct("<IIQQB")  # crc, length, index, term, type (for reading)

ENTRY_TYPES: dict[int, EntryType] = {t.value: t for t in EntryType}


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def encode_file_header(magic: bytes, first_index: int, generation: int) -> bytes:
    head = _FILE_HEADER.pack(magic, FORMAT_VERSION, 0, first_index, generation)
    return head + _CRC.pack(zlib.crc32(head))


def decode_file_header(magic: bytes, data: bytes, path: Path) -> tuple[int, int]:
    """(first_index, generation) from a file header; CorruptLogError if it is not valid."""
    if len(data) < FILE_HEADER_SIZE:
        raise CorruptLogError("file header is truncated", str(path), 0)
    head = data[: _FILE_HEADER.size]
    (crc,) = _CRC.unpack_from(data, _FILE_HEADER.size)
    file_magic, version, _reserved, first_index, generation = _FILE_HEADER.unpack(head)
    if file_magic != magic:
        raise CorruptLogError(f"bad magic {file_magic!r}, expected {magic!r}", str(path), 0)
    if zlib.crc32(head) != crc:
        raise CorruptLogError("file header CRC mismatch", str(path), 0)
    if version != FORMAT_VERSION:
        raise CorruptLogError(
            f"format version {version} is not supported (this version reads only version "
            f"{FORMAT_VERSION}; there is no migration)",
            str(path),
            0,
        )
    return first_index, generation


def encode_batch_header(first_index: int, count: int, length: int) -> bytes:
    body = _BATCH_BODY.pack(BATCH_MAGIC, first_index, count, length)
    return body + _CRC.pack(zlib.crc32(body))


def encode_batch(
    entries: Sequence[LogEntry], offset: int, offsets: array[int], terms: array[int]
) -> bytes:
    """The batch of `entries` (header and records) as one buffer to be written at file
    `offset`; appends each record's file offset and term to `offsets` and `terms`. The hot path
    of every append."""
    parts: list[bytes] = [b"", b""]  # the header, once the records' length is known
    add = parts.append
    pack_body = _REC_BODY.pack
    pack_crc = _REC_CRC.pack
    crc32 = zlib.crc32
    add_offset = offsets.append
    add_term = terms.append
    records_at = offset = offset + BATCH_HEADER_SIZE
    for e in entries:
        data = e.data
        body = pack_body(len(data), e.index, e.term, e.type)
        add(pack_crc(crc32(data, crc32(body))))
        add(body)
        add(data)
        add_offset(offset)
        add_term(e.term)
        offset += REC_HEADER_SIZE + len(data)
    parts[0] = head = _BATCH_BODY.pack(
        BATCH_MAGIC, entries[0].index, len(entries), offset - records_at
    )
    parts[1] = pack_crc(crc32(head))
    return b"".join(parts)


class Segment:
    """One segment file and its in-memory index.

    Invariants: `offsets[k]` is the file offset of the record with index first_index + k,
    `terms[k]` its term and `headers_after[k]` the number of batch headers between its end and
    the next record (or the end of the file): 0 inside a batch, 1 or 2 (a seal and a batch)
    after its last record. `batch_offsets[b]` is the file offset of batch b's header (seals
    included) and `batch_firsts[b]` its first index (non-decreasing: a seal has the next
    batch's). `size` is the end of the last batch (== the file size once opened); `fd` is an
    open O_RDWR descriptor or None (the owner opens and closes it lazily).
    """

    __slots__ = (
        "batch_firsts",
        "batch_offsets",
        "fd",
        "first_index",
        "generation",
        "headers_after",
        "offsets",
        "path",
        "size",
        "terms",
    )

    def __init__(self, path: Path, first_index: int, generation: int) -> None:
        """An empty segment (a file header only); recovery and appends fill the index."""
        self.path = path
        self.first_index = first_index
        self.generation = generation
        self.offsets: array[int] = array("q")
        self.terms: array[int] = array("q")
        self.headers_after = bytearray()
        self.batch_offsets: array[int] = array("q")
        self.batch_firsts: array[int] = array("q")
        self.size = FILE_HEADER_SIZE
        self.fd: int | None = None

    @property
    def last_index(self) -> int:
        """Index of the last record; first_index - 1 when the segment holds none."""
        return self.first_index + len(self.offsets) - 1

    @property
    def unsealed(self) -> bool:
        """Whether records follow the last seal (or there are records and no seal)."""
        return bool(self.batch_firsts) and self.batch_firsts[-1] <= self.last_index

    def record_end(self, k: int) -> int:
        """File offset just past record k."""
        offsets = self.offsets
        nxt = offsets[k + 1] if k + 1 < len(offsets) else self.size
        return nxt - BATCH_HEADER_SIZE * self.headers_after[k]

    def payload_size(self, k: int) -> int:
        return self.record_end(k) - self.offsets[k] - REC_HEADER_SIZE

    def read(self, fd: int, lo: int, hi: int) -> list[LogEntry]:
        """Entries with indexes lo..hi (all within this segment) in one pread, CRC-checked."""
        k_lo = lo - self.first_index
        offsets = self.offsets
        start = offsets[k_lo]
        end = self.record_end(hi - self.first_index)
        buf = pread_exact(fd, end - start, start)
        if len(buf) != end - start:
            raise CorruptLogError("segment is shorter than its index", str(self.path), start)
        view = memoryview(buf)
        unpack = RECORD_HEADER.unpack_from
        crc32 = zlib.crc32
        out: list[LogEntry] = []
        for k, index in enumerate(range(lo, hi + 1), k_lo):
            pos = offsets[k] - start  # batch headers may lie between records
            crc, length, rec_index, term, typ = unpack(buf, pos)
            rec_end = pos + REC_HEADER_SIZE + length
            entry_type = ENTRY_TYPES.get(typ)
            if crc32(view[pos + 4 : rec_end]) != crc or rec_index != index or entry_type is None:
                raise CorruptLogError(
                    f"record {index} failed validation on read", str(self.path), start + pos
                )
            out.append(LogEntry(index, term, entry_type, buf[pos + REC_HEADER_SIZE : rec_end]))
        return out

    def add_batch(self, offset: int, first_index: int, end: int) -> None:
        """Record in the index a batch written at `offset` and ending at `end` (its records'
        offsets and terms are already in, from `encode_batch`)."""
        headers_after = self.headers_after
        if headers_after:
            headers_after[-1] += 1  # this batch's header follows the last record
        headers_after.extend(bytes(len(self.offsets) - len(headers_after)))
        self.batch_offsets.append(offset)
        self.batch_firsts.append(first_index)
        self.size = end

    def append_seal(self) -> None:
        """Write a seal (an empty batch) at the end; the caller fdatasyncs it."""
        assert self.fd is not None
        offset = self.size
        pwrite_all(self.fd, encode_batch_header(self.last_index + 1, 0, 0), offset)
        self.add_batch(offset, self.last_index + 1, offset + BATCH_HEADER_SIZE)

    def cut_after(self, last_index_kept: int) -> None:
        """Durably drop every record after `last_index_kept` (>= first_index - 1).

        A cut at a batch boundary is one ftruncate. A cut inside batch B takes three steps, and
        recovery accepts the file after each of them (a crash may stop us anywhere):

        1. ftruncate at the end of B, dropping the later batches, fsync. After it, B is whole
           and valid: its entries after the cut reappear, which is harmless, because this
           truncation never returned (nothing was acknowledged on the strength of it).
        2. rewrite B's count, length and crc to cover only the kept records, fsync. After it,
           the stale records past B's new end have no valid batch header after them, so
           recovery cuts them off as a torn final batch.
        3. ftruncate at the first dropped record, fsync.

        Step 2 rewrites bytes of synced data in place: torn, it would leave B's header invalid
        and recovery would drop B whole, acknowledged entries included. It is safe only when the
        12 rewritten bytes lie in one `ATOMIC_WRITE_UNIT`; otherwise (about 2% of batches) the
        kept part of the file is rewritten into a new file, renamed over this one instead.
        """
        assert self.fd is not None
        keep = last_index_kept + 1 - self.first_index  # records kept
        if keep >= len(self.offsets):
            os.fsync(self.fd)  # durable like every truncation (unsynced appends included)
            return
        b = bisect_right(self.batch_firsts, last_index_kept + 1) - 1  # the batch holding the cut
        batch_at, batch_first = self.batch_offsets[b], self.batch_firsts[b]
        cut_at = self.offsets[keep]
        if batch_first == last_index_kept + 1:
            self._truncate_file(batch_at)  # the whole batch goes
            del self.batch_offsets[b:], self.batch_firsts[b:]
            if keep:
                self.headers_after[keep - 1] -= 1  # its header (a seal before it stays)
            cut_at = batch_at
        else:
            header = encode_batch_header(
                batch_first,
                last_index_kept + 1 - batch_first,
                cut_at - batch_at - BATCH_HEADER_SIZE,
            )
            counts_at = batch_at + _BATCH_COUNTS_AT
            if _in_one_atomic_unit(counts_at, BATCH_HEADER_SIZE - _BATCH_COUNTS_AT):
                if b + 1 < len(self.batch_offsets):
                    self._truncate_file(self.batch_offsets[b + 1])  # step 1
                pwrite_all(self.fd, header[_BATCH_COUNTS_AT:], counts_at)  # step 2
                os.fsync(self.fd)
                self._truncate_file(cut_at)  # step 3
            else:
                kept = pread_exact(self.fd, cut_at, 0)
                atomic_write(
                    self.path, kept[:batch_at] + header + kept[batch_at + BATCH_HEADER_SIZE :]
                )
                os.close(self.fd)  # it is the replaced file's
                self.fd = None  # not a closed descriptor, should the open fail
                self.fd = os.open(self.path, os.O_RDWR)
            del self.batch_offsets[b + 1 :], self.batch_firsts[b + 1 :]
        del self.offsets[keep:], self.terms[keep:], self.headers_after[keep:]
        self.size = cut_at

    def _truncate_file(self, size: int) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, size)
        os.fsync(self.fd)


def _in_one_atomic_unit(offset: int, size: int) -> bool:
    return offset // ATOMIC_WRITE_UNIT == (offset + size - 1) // ATOMIC_WRITE_UNIT


def create_segment(directory: Path, first_index: int, generation: int) -> Segment:
    """Create a new, empty segment durably (header in a temp file, fsync, rename, fsync the
    directory) so that a `.seg` file never exists without a whole header. Returns it open."""
    path = directory / segment_name(first_index)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        pwrite_all(fd, encode_file_header(SEGMENT_MAGIC, first_index, generation), 0)
        os.fsync(fd)
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        raise
    seg = Segment(path, first_index, generation)
    seg.fd = fd
    return seg
