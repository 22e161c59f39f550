"""Recovery of a segment file at open: validate every batch and record, and tell the torn final
batch of a crash (cut off, with a warning) from corruption (refuse to open).

The rule, applied to the first damage in a segment (a bad batch header, a batch running past
the end of the file, or a bad record inside a batch) found in the batch at offset P:

- in a sealed segment (any but the newest) it is corruption: a segment is fdatasynced before a
  newer one is created;
- in the newest segment, if a valid batch header lies anywhere after P, it is corruption: with
  sync on a batch is written only after the previous one's fdatasync returned, so the damaged
  batch was synced and may hold acknowledged entries. A seal is such a header, so after a clean
  close damage anywhere is corruption. (A header counts only if its first index is possible
  there, so that a payload which happens to contain one cannot fake it.) Non-zero bytes after
  the end that P's valid header claims are corruption too: a crash leaves nothing past the end
  of the batch that was being written;
- otherwise P starts the final batch, torn by a crash before its fdatasync returned (so it was
  never acknowledged): the file is cut at P, dropping the whole batch, with a warning. No
  prefix of a torn batch is kept.

With sync off (benchmarks only), any number of batches at the end may be unsynced and persisted
in any order, so only a later *seal* proves synced data (seals are written with sync on, after
the fdatasync of what they follow): damage with no seal after it is cut off there. A log written
with sync off that crashed should be reopened with sync off: with sync on, the strict rule may
refuse it.

A CRC-valid header or record that contradicts the log (a wrong index, an unknown type, a count
that does not match the records) is never a crash artefact: it is corruption wherever it is.
"""

from __future__ import annotations

import logging
import os
import zlib
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from storage.errors import CorruptLogError
from storage.segment import (
    BATCH_CRC_AT,
    BATCH_HEADER,
    BATCH_HEADER_SIZE,
    BATCH_MAGIC,
    ENTRY_TYPES,
    FILE_HEADER_SIZE,
    REC_HEADER_SIZE,
    RECORD_HEADER,
    Segment,
)

log = logging.getLogger(__name__)


class Tail(Enum):
    """What of a segment may be unsynced, hence torn by a crash."""

    SEALED = "nothing"  # not the newest segment: fdatasynced before a newer one was created
    LAST_BATCH = "its last batch"  # the newest segment, sync on
    UNSYNCED = "every batch after its last seal"  # the newest segment, sync off


class _Damage(NamedTuple):
    reason: str
    offset: int  # of the bad header or record
    claimed_end: int = -1  # where the batch's valid header says it ends; -1 if not valid


def recover_segment(path: Path, first_index: int, generation: int, tail: Tail) -> Segment:
    """Read and validate the segment file at `path`, cut off its torn tail (fsynced, with a
    warning) if it has one, and return it indexed (not open). CorruptLogError if damaged."""
    with open(path, "rb") as f:
        buf = f.read()
    seg = scan_segment(buf, path, first_index, generation, tail)
    if seg.size < len(buf):
        log.warning(
            "cutting off the torn tail of %s at offset %d (%d bytes)",
            path,
            seg.size,
            len(buf) - seg.size,
        )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, seg.size)
            os.fsync(fd)
        finally:
            os.close(fd)
    return seg


def scan_segment(buf: bytes, path: Path, first_index: int, generation: int, tail: Tail) -> Segment:
    """The segment whose file content (header included) is `buf`, indexed batch by batch.

    Its size is where the valid content ends: less than len(buf) only for a torn tail, which
    the caller cuts off. Raises CorruptLogError for any other damage (module docstring).
    """
    seg = Segment(path, first_index, generation)
    view = memoryview(buf)
    pos = FILE_HEADER_SIZE
    expected = first_index
    while pos < len(buf):
        scanned = _scan_batch(buf, view, pos, expected, seg)
        if isinstance(scanned, _Damage):
            _refuse_unless_torn(buf, seg.path, pos, expected, scanned, tail)
            break
        seg.add_batch(pos, expected, scanned)
        expected = seg.last_index + 1
        pos = scanned
    return seg


def _scan_batch(
    buf: bytes, view: memoryview, pos: int, expected: int, seg: Segment
) -> int | _Damage:
    """Validate the batch at `pos`, which must start at index `expected`, and append its
    records' offsets and terms to `seg`. Returns the batch's end, or its damage (and then
    appends nothing)."""
    size = len(buf)
    if size - pos < BATCH_HEADER_SIZE:
        return _Damage("batch header is truncated", pos)
    magic, first, count, length, crc = BATCH_HEADER.unpack_from(buf, pos)
    if magic != BATCH_MAGIC:
        return _Damage("bad batch magic", pos)
    if zlib.crc32(view[pos : pos + BATCH_CRC_AT]) != crc:
        return _Damage("batch header CRC mismatch", pos)
    where = str(seg.path)
    if first != expected:
        raise CorruptLogError(f"batch starts at index {first}, expected {expected}", where, pos)
    if count * REC_HEADER_SIZE > length or (count == 0 and length != 0):
        raise CorruptLogError(f"a batch of {count} records cannot be {length} bytes", where, pos)
    end = pos + BATCH_HEADER_SIZE + length
    if end > size:
        return _Damage("batch runs past the end of the file", pos, end)
    offsets, terms = seg.offsets, seg.terms
    kept = len(offsets)
    unpack = RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    rec = pos + BATCH_HEADER_SIZE
    for index in range(first, first + count):
        if end - rec < REC_HEADER_SIZE:
            reason = "record header runs past its batch"
        else:
            rec_crc, payload_size, rec_index, term, typ = unpack(buf, rec)
            rec_end = rec + REC_HEADER_SIZE + payload_size
            if rec_end > end:
                reason = "record runs past its batch"
            elif crc32(view[rec + 4 : rec_end]) != rec_crc:
                reason = "record CRC mismatch"
            elif rec_index != index:
                raise CorruptLogError(f"record has index {rec_index}, expected {index}", where, rec)
            elif typ not in ENTRY_TYPES:
                raise CorruptLogError(f"record {index} has unknown type {typ}", where, rec)
            else:
                offsets.append(rec)
                terms.append(term)
                rec = rec_end
                continue
        del offsets[kept:], terms[kept:]
        return _Damage(reason, rec, end)
    if rec != end:
        raise CorruptLogError(
            f"the {count} records of the batch end at offset {rec}, its header says {end}",
            where,
            pos,
        )
    return end


def _refuse_unless_torn(
    buf: bytes, path: Path, batch_at: int, expected: int, damage: _Damage, tail: Tail
) -> None:
    """Raise CorruptLogError unless `damage`, in the batch at `batch_at` (whose first index
    should be `expected`), can be the torn final batch of a crash."""
    where = str(path)
    if tail is Tail.SEALED:
        raise CorruptLogError(f"{damage.reason} in a sealed segment", where, damage.offset)
    later = _later_header(buf, batch_at, expected, seals_only=tail is Tail.UNSYNCED)
    if later >= 0:
        what = "seal" if tail is Tail.UNSYNCED else "batch"
        raise CorruptLogError(
            f"{damage.reason}, followed by a later {what} at offset {later}", where, damage.offset
        )
    if (
        tail is Tail.LAST_BATCH
        and damage.claimed_end >= 0
        and buf[damage.claimed_end :].strip(b"\0")
    ):
        raise CorruptLogError(f"{damage.reason}, followed by more data", where, damage.offset)


def _later_header(buf: bytes, batch_at: int, expected: int, seals_only: bool) -> int:
    """Offset of a valid batch header (only a seal if `seals_only`) after the damaged batch at
    `batch_at`, or -1.

    The damaged header's fields cannot be trusted (the damage may be in its length), so this
    searches for the magic. A header counts only with a first index that a real later batch
    could have: at least `expected`, and at most one more per REC_HEADER_SIZE bytes passed.
    """
    pos = buf.find(BATCH_MAGIC, batch_at + 1)
    while pos >= 0:
        if len(buf) - pos >= BATCH_HEADER_SIZE:
            _magic, first, count, _length, crc = BATCH_HEADER.unpack_from(buf, pos)
            if (
                zlib.crc32(buf[pos : pos + BATCH_CRC_AT]) == crc
                and expected <= first <= expected + (pos - batch_at) // REC_HEADER_SIZE
                and (count == 0 or not seals_only)
            ):
                return pos
        pos = buf.find(BATCH_MAGIC, pos + 1)
    return -1
