"""Segment files of `SegmentLogStorage`: the record format, encoding, recovery scan and reads.

On-disk format, version 1. All integers are little-endian.

A segment file is named ``<first index, 20 digits>.seg`` and holds::

    file header (32 bytes)
      magic        8s   b"PKRFTSEG"
      version      u16  1
      reserved     u16  0
      first_index  u64  index of the file's first record; equals the number in the file name
      generation   u64  the log's reset generation when the file was created (see log_storage)
      header_crc   u32  CRC32 of the 28 bytes above
    records, back to back, each (25-byte header + payload)
      crc          u32  CRC32 (zlib) of every byte after this field: the 21 header bytes below
                        followed by the payload
      length       u32  payload length in bytes
      index        u64
      term         u64
      type         u8   EntryType value
      payload      `length` bytes

Invariant: record k (counting from 0) of a file has index first_index + k.

A segment is created complete (header written to a temp file, fsynced, renamed, directory
fsynced), so a ``.seg`` file always starts with a whole header. Records are only ever appended
at the end, or cut off at the end (truncate_suffix), so a crash can damage only the tail of the
newest segment: `scan_records` tells such a torn tail (cut off) from corruption (refuse to open).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path

from storage._fileutil import TMP_SUFFIX, fsync_dir, pread_exact, pwrite_all
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"PKRFTSEG"
FORMAT_VERSION = 1
SEGMENT_SUFFIX = ".seg"

# Fixed-size file header shared by segments and the log's meta file (different magic).
_FILE_HEADER = struct.Struct("<8sHHQQ")
_FILE_CRC = struct.Struct("<I")
FILE_HEADER_SIZE = _FILE_HEADER.size + _FILE_CRC.size  # 32

_REC_CRC = struct.Struct("<I")
_REC_BODY = struct.Struct("<IQQB")  # length, index, term, type
REC_HEADER_SIZE = _REC_CRC.size + _REC_BODY.size  # 25
_REC_HEADER = struct.Struct("<IIQQB")  # crc, length, index, term, type (for reading)
_INDEX_AT = 8  # offset of the index field inside a record
_INDEX = struct.Struct("<Q")

_TYPES: dict[int, EntryType] = {t.value: t for t in EntryType}

# How many following indexes `_valid_record_after` looks for when deciding torn vs corrupt.
_LOOKAHEAD = 32


def segment_name(first_index: int) -> str:
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def encode_file_header(magic: bytes, first_index: int, generation: int) -> bytes:
    head = _FILE_HEADER.pack(magic, FORMAT_VERSION, 0, first_index, generation)
    return head + _FILE_CRC.pack(zlib.crc32(head))


def decode_file_header(magic: bytes, data: bytes, path: Path) -> tuple[int, int]:
    """(first_index, generation) from a file header; CorruptLogError if it is not valid."""
    if len(data) < FILE_HEADER_SIZE:
        raise CorruptLogError("file header is truncated", str(path), 0)
    head = data[: _FILE_HEADER.size]
    (crc,) = _FILE_CRC.unpack_from(data, _FILE_HEADER.size)
    file_magic, version, _reserved, first_index, generation = _FILE_HEADER.unpack(head)
    if file_magic != magic:
        raise CorruptLogError(f"bad magic {file_magic!r}, expected {magic!r}", str(path), 0)
    if zlib.crc32(head) != crc:
        raise CorruptLogError("file header CRC mismatch", str(path), 0)
    if version != FORMAT_VERSION:
        raise CorruptLogError(f"unsupported format version {version}", str(path), 0)
    return first_index, generation


def encode_records(
    entries: Sequence[LogEntry], offset: int, offsets: array[int], terms: array[int]
) -> bytes:
    """The records of `entries` as one buffer to be written at file `offset`; appends each
    record's file offset and term to `offsets` and `terms`. The hot path of every append."""
    parts: list[bytes] = []
    add = parts.append
    pack_body = _REC_BODY.pack
    pack_crc = _REC_CRC.pack
    crc32 = zlib.crc32
    add_offset = offsets.append
    add_term = terms.append
    for e in entries:
        data = e.data
        body = pack_body(len(data), e.index, e.term, e.type)
        add(pack_crc(crc32(data, crc32(body))))
        add(body)
        add(data)
        add_offset(offset)
        add_term(e.term)
        offset += REC_HEADER_SIZE + len(data)
    return b"".join(parts)


class Segment:
    """One segment file and its in-memory index.

    Invariants: `offsets[k]` is the file offset of the record with index first_index + k and
    `terms[k]` its term; `size` is the end of the last record (== the file size once opened);
    `fd` is an open O_RDWR descriptor or None (the owner opens and closes it lazily).
    """

    __slots__ = ("fd", "first_index", "generation", "offsets", "path", "size", "terms")

    def __init__(
        self,
        path: Path,
        first_index: int,
        generation: int,
        offsets: array[int],
        terms: array[int],
        size: int,
    ) -> None:
        self.path = path
        self.first_index = first_index
        self.generation = generation
        self.offsets = offsets
        self.terms = terms
        self.size = size
        self.fd: int | None = None

    @property
    def last_index(self) -> int:
        """Index of the last record; first_index - 1 when the segment holds none."""
        return self.first_index + len(self.offsets) - 1

    def record_end(self, k: int) -> int:
        """File offset just past record k."""
        return self.offsets[k + 1] if k + 1 < len(self.offsets) else self.size

    def payload_size(self, k: int) -> int:
        return self.record_end(k) - self.offsets[k] - REC_HEADER_SIZE

    def read(self, fd: int, lo: int, hi: int) -> list[LogEntry]:
        """Entries with indexes lo..hi (all within this segment) in one pread, CRC-checked."""
        k_lo = lo - self.first_index
        k_hi = hi - self.first_index
        start = self.offsets[k_lo]
        end = self.record_end(k_hi)
        buf = pread_exact(fd, end - start, start)
        if len(buf) != end - start:
            raise CorruptLogError("segment is shorter than its index", str(self.path), start)
        view = memoryview(buf)
        unpack = _REC_HEADER.unpack_from
        crc32 = zlib.crc32
        out: list[LogEntry] = []
        pos = 0
        for index in range(lo, hi + 1):
            crc, length, rec_index, term, typ = unpack(buf, pos)
            rec_end = pos + REC_HEADER_SIZE + length
            entry_type = _TYPES.get(typ)
            if crc32(view[pos + 4 : rec_end]) != crc or rec_index != index or entry_type is None:
                raise CorruptLogError(
                    f"record {index} failed validation on read", str(self.path), start + pos
                )
            out.append(LogEntry(index, term, entry_type, buf[pos + REC_HEADER_SIZE : rec_end]))
            pos = rec_end
        return out


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
    seg = Segment(path, first_index, generation, array("q"), array("q"), FILE_HEADER_SIZE)
    seg.fd = fd
    return seg


def _record_at(buf: bytes, pos: int, index: int) -> bool:
    """Whether a complete, CRC-valid record with the given index starts at `pos`."""
    if pos < 0 or len(buf) - pos < REC_HEADER_SIZE:
        return False
    crc, length, rec_index, _term, _typ = _REC_HEADER.unpack_from(buf, pos)
    end = pos + REC_HEADER_SIZE + length
    return rec_index == index and end <= len(buf) and zlib.crc32(buf[pos + 4 : end]) == crc


def _valid_record_after(buf: bytes, pos: int, index: int) -> bool:
    """Whether any valid record with an index in index..index+_LOOKAHEAD starts after `pos`.

    Used only on the error path: if the bad record at `pos` is followed by a valid record, the
    damage is not a torn tail (a crash only damages what was written last) but corruption of
    data that may have been acknowledged. We cannot trust the bad record's length field (it may
    be the damaged byte), so we search for the index field of the records that would follow.
    """
    for candidate in range(index, index + _LOOKAHEAD + 1):
        pattern = _INDEX.pack(candidate)
        hit = buf.find(pattern, pos + 1 + _INDEX_AT)
        while hit != -1:
            if _record_at(buf, hit - _INDEX_AT, candidate):
                return True
            hit = buf.find(pattern, hit + 1)
    return False


def scan_records(
    buf: bytes, path: Path, first_index: int, last_segment: bool
) -> tuple[array[int], array[int], int]:
    """Validate every record of a segment file's content `buf` (header included).

    Returns (offsets, terms, valid_end). valid_end < len(buf) only for a torn tail of the last
    segment, which the caller cuts off. Raises CorruptLogError for anything else:

    - a bad record (short header, payload running past the end, CRC mismatch) in a segment that
      is not the last one: sealed segments were fsynced before the next one was created;
    - a bad record in the last segment followed by a valid record, or by non-zero bytes past
      where the bad record claims to end: it is not the tail that a crash tears;
    - a CRC-valid record whose index is not the next one, or whose type is unknown.

    A bad last record with nothing but zeros (or nothing) after it is torn: it was being written
    when the process died, so its append never returned and it was never acknowledged.
    """
    offsets: array[int] = array("q")
    terms: array[int] = array("q")
    view = memoryview(buf)
    end = len(buf)
    pos = FILE_HEADER_SIZE
    expected = first_index
    unpack = _REC_HEADER.unpack_from
    crc32 = zlib.crc32
    while pos < end:
        claimed_end = end
        if end - pos < REC_HEADER_SIZE:
            reason = "record header is truncated"
        else:
            crc, length, index, term, typ = unpack(buf, pos)
            claimed_end = pos + REC_HEADER_SIZE + length
            if claimed_end > end:
                reason = "record payload is truncated"
            elif crc32(view[pos + 4 : claimed_end]) != crc:
                reason = "record CRC mismatch"
            elif index != expected:
                raise CorruptLogError(
                    f"record has index {index}, expected {expected}", str(path), pos
                )
            elif typ not in _TYPES:
                raise CorruptLogError(f"record {index} has unknown type {typ}", str(path), pos)
            else:
                offsets.append(pos)
                terms.append(term)
                expected += 1
                pos = claimed_end
                continue
        # `pos` is a bad record: a torn tail, or corruption.
        if not last_segment:
            raise CorruptLogError(f"{reason} in a sealed segment", str(path), pos)
        if _valid_record_after(buf, pos, expected):
            raise CorruptLogError(f"{reason}, followed by valid records", str(path), pos)
        if buf[claimed_end:].strip(b"\x00"):
            raise CorruptLogError(f"{reason}, followed by more data", str(path), pos)
        return offsets, terms, pos
    return offsets, terms, pos
