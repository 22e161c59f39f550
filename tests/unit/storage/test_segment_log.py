"""SegmentLogStorage beyond the contract: the files it writes, recovery after crashes and
damage, failing I/O, and resource limits."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError, StorageError
from storage.log_storage import META_NAME, SegmentLogStorage
from storage.recovery import Tail, scan_segment
from storage.segment import (
    BATCH_HEADER_SIZE,
    FILE_HEADER_SIZE,
    REC_HEADER_SIZE,
    Segment,
    encode_batch_header,
    segment_name,
)

SMALL = 500  # bytes per segment: 8 single-entry batches (63 bytes each) per segment
PAYLOAD = 10
RECORD = REC_HEADER_SIZE + PAYLOAD
BATCH_OF_ONE = BATCH_HEADER_SIZE + RECORD  # what append_entries([entry]) writes
RECOVERY_LOGGER = "storage.recovery"


def entry(index: int, term: int = 1, size: int = PAYLOAD) -> LogEntry:
    data = (f"{index}@{term}:".encode() * size)[:size]
    return LogEntry(index, term, EntryType.DATA, data)


def entries(first: int, last: int, term: int = 1, size: int = PAYLOAD) -> list[LogEntry]:
    return [entry(i, term, size) for i in range(first, last + 1)]


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def build(path: Path, last: int, segment_size: int = SMALL, batch: int = 1) -> None:
    """A closed (so sealed) log at `path` holding entries(1, last), appended `batch` at a time."""
    log = SegmentLogStorage(path, segment_size=segment_size)
    for first in range(1, last + 1, batch):
        log.append_entries(entries(first, min(first + batch - 1, last)))
    log.close()


def unseal(path: Path) -> Path:
    """Remove the seal that close() appended to the newest segment: the files are then what a
    crash right after the last append leaves. Returns that segment."""
    seg = segment_files(path)[-1]
    raw = seg.read_bytes()
    magic, _first, count, length, _crc = struct.unpack_from("<8sQIII", raw, len(raw) - 28)
    assert (magic, count, length) == (b"PKRFTBAT", 0, 0)
    os.truncate(seg, len(raw) - BATCH_HEADER_SIZE)
    return seg


def build_crashed(path: Path, last: int, segment_size: int = SMALL, batch: int = 1) -> Path:
    """`build`, then a crash after the last append (no seal). Returns the newest segment."""
    build(path, last, segment_size, batch)
    return unseal(path)


def reopen_all(path: Path, sync: bool = True) -> list[LogEntry]:
    log = SegmentLogStorage(path, segment_size=SMALL, sync=sync)
    try:
        return log.get_entries(log.first_log_index(), log.last_log_index())
    finally:
        log.close()


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def batch_offset(k: int) -> int:
    """File offset of the k-th batch (from 0) of a segment of single-entry batches."""
    return FILE_HEADER_SIZE + k * BATCH_OF_ONE


def record_offset(k: int) -> int:
    """File offset of the k-th record (from 0) of a segment of single-entry batches."""
    return batch_offset(k) + BATCH_HEADER_SIZE


def warned_cut(caplog: pytest.LogCaptureFixture, seg: Path, offset: int) -> bool:
    """Whether recovery logged that it cut `seg` at `offset`."""
    return any(
        r.levelno == logging.WARNING
        and seg.name in r.getMessage()
        and f"offset {offset} " in r.getMessage()
        for r in caplog.records
    )


# ---- files and format ----------------------------------------------------------------------


def test_creates_the_directory_and_names_segments_by_first_index(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    build(path, 20)
    names = [p.name for p in segment_files(path)]
    # A new segment starts once one reaches SMALL bytes: 8 batches fit (32 + 8*63 = 536).
    assert names == [segment_name(1), segment_name(9), segment_name(17)]
    assert (path / META_NAME).exists()
    assert (path / segment_name(9)).read_bytes()[:8] == b"PKRFTSEG"
    assert os.path.getsize(path / segment_name(1)) == batch_offset(8)  # no seal: not the newest
    # The newest one: 4 batches and the seal that close() appended.
    assert os.path.getsize(path / segment_name(17)) == batch_offset(4) + BATCH_HEADER_SIZE


def test_a_batch_is_never_split_across_segments(tmp_path: Path) -> None:
    build(tmp_path, 40, batch=16)
    assert [p.name for p in segment_files(tmp_path)] == [
        segment_name(1),
        segment_name(17),
        segment_name(33),
    ]
    assert reopen_all(tmp_path) == entries(1, 40)


def test_layout_is_the_documented_one(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path)
    log.append_entries([LogEntry(1, 7, EntryType.CONFIGURATION, b"abc")])
    log.append_entries([LogEntry(2, 8, EntryType.DATA, b""), LogEntry(3, 8, EntryType.NO_OP)])
    log.close()
    raw = (tmp_path / segment_name(1)).read_bytes()
    magic, version, _, first, generation, crc = struct.unpack_from("<8sHHQQI", raw)
    assert (magic, version, first, generation) == (b"PKRFTSEG", 2, 1, 0)
    assert crc == zlib.crc32(raw[:28])
    # Batch 1: header, then its one record.
    magic, first, count, length, crc = struct.unpack_from("<8sQIII", raw, 32)
    assert (magic, first, count, length) == (b"PKRFTBAT", 1, 1, 28)
    assert crc == zlib.crc32(raw[32:56])
    crc, size, index, term, typ = struct.unpack_from("<IIQQB", raw, 60)
    assert (size, index, term, typ) == (3, 1, 7, 2)
    assert raw[85:88] == b"abc"
    assert crc == zlib.crc32(raw[64:88])
    # Batch 2: two records with empty payloads.
    assert struct.unpack_from("<8sQII", raw, 88) == (b"PKRFTBAT", 2, 2, 50)
    assert struct.unpack_from("<IQQB", raw, 116 + 4) == (0, 2, 8, 1)
    assert struct.unpack_from("<IQQB", raw, 141 + 4) == (0, 3, 8, 0)
    # The seal written by close(): an empty batch with the next index.
    assert raw[166:] == encode_batch_header(4, 0, 0)
    assert len(raw) == 166 + BATCH_HEADER_SIZE


@pytest.mark.parametrize("which", ["segment", META_NAME])
def test_version_1_files_are_refused(tmp_path: Path, which: str) -> None:
    """Version 1 had no batches; there is no migration (the project is pre-release). log.meta
    shares the header and its version: the format is the whole directory's."""
    build(tmp_path, 20)
    path = segment_files(tmp_path)[1] if which == "segment" else tmp_path / META_NAME
    raw = bytearray(path.read_bytes())
    struct.pack_into("<H", raw, 8, 1)
    struct.pack_into("<I", raw, 28, zlib.crc32(raw[:28]))  # a valid version-1 header
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError, match="format version 1 is not supported") as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert (err.value.path, err.value.offset) == (str(path), 0)


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    build(tmp_path, 5)
    (tmp_path / (segment_name(6) + ".tmp")).write_bytes(b"half a header")
    (tmp_path / (META_NAME + ".tmp")).write_bytes(b"junk")
    assert reopen_all(tmp_path) == entries(1, 5)
    assert not list(tmp_path.glob("*.tmp"))


def test_unrelated_files_are_left_alone(tmp_path: Path) -> None:
    build(tmp_path, 5)
    (tmp_path / "README").write_text("hello")
    assert reopen_all(tmp_path) == entries(1, 5)
    assert (tmp_path / "README").read_text() == "hello"


# ---- torn final batches: cut off whole, with a warning -------------------------------------


def test_cut_at_every_byte_of_the_final_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-append may leave any prefix of the final batch: it must be dropped (never
    acknowledged), the rest kept, and new appends must continue correctly."""
    original = tmp_path / "original"
    last_seg = build_crashed(original, 20)  # the newest segment holds 17..20
    size = os.path.getsize(last_seg)
    start = size - BATCH_OF_ONE
    assert start == batch_offset(3)
    for cut in range(start, size):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(original, work)
        os.truncate(work / last_seg.name, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=RECOVERY_LOGGER):
            log = SegmentLogStorage(work, segment_size=SMALL)
        assert warned_cut(caplog, last_seg, start) == (cut > start), caplog.text
        assert log.last_log_index() == 19
        assert log.get_entries(1, 19) == entries(1, 19)
        assert os.path.getsize(work / last_seg.name) == start
        log.append_entries(entries(20, 22, term=2))
        log.close()
        assert reopen_all(work) == entries(1, 19) + entries(20, 22, term=2)
        shutil.rmtree(work)


def test_torn_final_batch_in_a_fresh_segment(tmp_path: Path) -> None:
    build(tmp_path, 9)  # segment 9 holds just batch 9 (and the seal)
    seg = tmp_path / segment_name(9)
    for cut in (FILE_HEADER_SIZE + 1, record_offset(0) + 2, record_offset(0) + REC_HEADER_SIZE):
        os.truncate(seg, cut)
        assert reopen_all(tmp_path) == entries(1, 8)
        assert os.path.getsize(seg) == FILE_HEADER_SIZE
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(9, 10, term=3))
    log.close()
    assert reopen_all(tmp_path) == entries(1, 8) + entries(9, 10, term=3)


FINAL_BATCH_BYTES = {  # where to flip a byte, relative to the final (single-entry) batch
    "batch-magic": 0,
    "batch-first-index": 8,
    "batch-count": 16,
    "batch-length": 20,
    "batch-crc": 24,
    "record-crc": BATCH_HEADER_SIZE,
    "record-length-low": BATCH_HEADER_SIZE + 4,
    "record-index": BATCH_HEADER_SIZE + 8,
    "payload": BATCH_HEADER_SIZE + REC_HEADER_SIZE + 3,
    "last-byte": BATCH_OF_ONE - 1,
}


@pytest.mark.parametrize("where", FINAL_BATCH_BYTES)
def test_a_damaged_final_batch_after_a_crash_is_cut_as_torn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """The inherent ambiguity: without a seal nothing valid follows the final batch, so a crash
    may have produced any damage in it. It is cut off whole (with a warning), like a torn
    write, even though it may be a bit flip in a batch that was synced."""
    seg = build_crashed(tmp_path, 20)
    flip_byte(seg, batch_offset(3) + FINAL_BATCH_BYTES[where])
    with caplog.at_level(logging.WARNING, logger=RECOVERY_LOGGER):
        assert reopen_all(tmp_path) == entries(1, 19)
    assert warned_cut(caplog, seg, batch_offset(3)), caplog.text
    assert os.path.getsize(seg) == batch_offset(3) + BATCH_HEADER_SIZE  # a new seal


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    """Some file systems show a crashed, extended-but-unwritten tail as zeros."""
    for sealed in (True, False):
        path = tmp_path / f"sealed-{sealed}"
        build(path, 20)
        seg = segment_files(path)[-1] if sealed else unseal(path)
        size = os.path.getsize(seg)
        with open(seg, "ab") as f:
            f.write(bytes(500))
        log = SegmentLogStorage(path, segment_size=SMALL)
        assert log.get_entries(1, 20) == entries(1, 20)
        assert os.path.getsize(seg) == size
        log.close()


# ---- a crash during a group commit: any subset of the final batch's pages ------------------

PAGE = 4096


def crash_images(old: bytes, new: bytes) -> Iterator[tuple[bytes, bool]]:
    """Every file a crash may leave while `new` (`old` and one more batch) was being written:
    each page the batch touches holds its new content or its old one (zeros past the old end),
    in every combination, and the file's length is the old one, the new one or the new one
    rounded up to a page. Yields (content, whether all of the batch is in it)."""
    assert new.startswith(old)
    rounded = -(-len(new) // PAGE) * PAGE
    old_pages = old.ljust(rounded, b"\0")
    new_pages = new.ljust(rounded, b"\0")
    pages = range(len(old) // PAGE, rounded // PAGE)
    every_page = 2 ** len(pages) - 1
    for persisted in range(every_page + 1):
        content = bytearray(old_pages)
        for bit, page in enumerate(pages):
            if persisted >> bit & 1:
                at = page * PAGE
                content[at : at + PAGE] = new_pages[at : at + PAGE]
        for length in (len(old), len(new), rounded):
            yield bytes(content[:length]), persisted == every_page and length >= len(new)


# name: (segment_size, the synced batches and the final one as payload sizes, whether the log is
# closed and reopened before the final batch, where the final batch starts in its file)
CRASH_SCENARIOS = {
    "mid-page": (1 << 20, [[10], [10], [10], [1500, 1500]], [3000] * 4, False, 3299),
    "on-a-page-boundary": (1 << 20, [[10], [10], [10], [7918]], [4000] * 3, False, 2 * PAGE),
    "header-across-pages": (1 << 20, [[10], [10], [10], [7905]], [3500] * 4, False, 2 * PAGE - 13),
    "after-a-seal": (1 << 20, [[10, 10, 10], [1500, 1500]], [3000] * 4, True, 3271),
    "first-of-a-new-segment": (PAGE, [[1500, 1500], [1500, 1500]], [4000] * 3, False, 32),
}


@pytest.mark.parametrize("scenario", CRASH_SCENARIOS)
def test_a_crash_during_a_group_commit_keeps_every_synced_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, scenario: str
) -> None:
    """For every subset of the final batch's pages that a crash may have persisted, reopening
    succeeds with exactly the synced batches, plus the final batch only if all of it is there
    (no prefix of a torn batch is kept)."""
    segment_size, synced, final_sizes, reopen, final_at = CRASH_SCENARIOS[scenario]
    live = tmp_path / "live"
    log = SegmentLogStorage(live, segment_size=segment_size)
    kept: list[LogEntry] = []
    for sizes in synced:
        batch = [entry(len(kept) + 1 + i, 1, size) for i, size in enumerate(sizes)]
        log.append_entries(batch)
        kept += batch
    if reopen:
        log.close()
        log = SegmentLogStorage(live, segment_size=segment_size)
    before = {p.name: p.read_bytes() for p in segment_files(live)}
    final = [entry(len(kept) + 1 + i, 2, size) for i, size in enumerate(final_sizes)]
    log.append_entries(final)
    crashed = tmp_path / "crashed"
    shutil.copytree(live, crashed)  # what a crash now leaves, if every page got to the disk
    log.close()
    name = segment_files(crashed)[-1].name
    new = (crashed / name).read_bytes()
    # A new segment is created whole (header only) before the batch is written into it.
    old = before.get(name, new[:FILE_HEADER_SIZE])
    assert len(old) == final_at
    assert 3 <= -(-len(new) // PAGE) - len(old) // PAGE <= 5  # pages the final batch touches

    images = 0
    for content, complete in crash_images(old, new):
        work = tmp_path / f"image{images}"
        images += 1
        shutil.copytree(crashed, work)
        (work / name).write_bytes(content)
        survivors = kept + final if complete else kept
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=RECOVERY_LOGGER):
            log = SegmentLogStorage(work, segment_size=segment_size)
        assert (log.first_log_index(), log.last_log_index()) == (1, len(survivors))
        assert log.get_entries(1, len(survivors)) == survivors
        assert os.path.getsize(work / name) == (len(new) if complete else len(old))
        if len(content) > len(old) and not complete:
            assert warned_cut(caplog, work / name, len(old)), caplog.text
        after = entry(len(survivors) + 1, 3)
        log.append_entries([after])
        log.close()
        log = SegmentLogStorage(work, segment_size=segment_size)
        assert log.get_entries(1, len(survivors) + 1) == [*survivors, after]
        log.close()
        shutil.rmtree(work)
    assert images >= 3 * 2**3


# ---- corruption: refuse to open, naming file and offset ------------------------------------


def test_bad_final_batch_followed_by_non_zero_garbage_is_corruption(tmp_path: Path) -> None:
    """A crash tears what was being written; it does not write past the end that the final
    batch's (valid) header announces."""
    seg = build_crashed(tmp_path, 20)
    flip_byte(seg, record_offset(3) + REC_HEADER_SIZE)
    with open(seg, "ab") as f:
        f.write(b"\x01" * 40)
    with pytest.raises(CorruptLogError, match="followed by more data") as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.offset == record_offset(3)


def damage_offset(batch_at: int, flipped: int) -> int:
    """Where recovery reports damage from a byte flipped at `flipped` in the single-entry batch
    at `batch_at`: its header, or its record."""
    return batch_at if flipped < batch_at + BATCH_HEADER_SIZE else batch_at + BATCH_HEADER_SIZE


@pytest.mark.parametrize("k", [0, 1, 2])  # batches 17, 18, 19 of the newest segment (17..20)
def test_flipping_any_byte_of_a_batch_followed_by_another_is_corruption(
    tmp_path: Path, k: int
) -> None:
    """No seal needed: the batch after it proves this one was synced."""
    original = tmp_path / "original"
    name = build_crashed(original, 20).name
    start = batch_offset(k)
    for offset in range(start, start + BATCH_OF_ONE):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(original, work)
        flip_byte(work / name, offset)
        with pytest.raises(CorruptLogError, match="followed by a later batch") as err:
            SegmentLogStorage(work, segment_size=SMALL)
        assert err.value.path == str(work / name)
        assert err.value.offset == damage_offset(start, offset), f"flipped byte at {offset}"
        assert name in str(err.value)
        shutil.rmtree(work)


def test_flipping_any_byte_of_the_final_batch_of_a_closed_log_is_corruption(
    tmp_path: Path,
) -> None:
    """After a clean close the seal follows the final batch, so every byte is verifiable."""
    original = tmp_path / "original"
    build(original, 20, batch=2)  # the newest segment holds batches 17..18 and 19..20, sealed
    seg = segment_files(original)[-1]
    start = os.path.getsize(seg) - BATCH_HEADER_SIZE - (BATCH_HEADER_SIZE + 2 * RECORD)
    for offset in range(start, start + BATCH_HEADER_SIZE + 2 * RECORD):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(original, work)
        flip_byte(work / seg.name, offset)
        with pytest.raises(CorruptLogError, match="followed by a later batch") as err:
            SegmentLogStorage(work, segment_size=SMALL)
        assert err.value.path == str(work / seg.name), f"flipped byte at {offset}"
        shutil.rmtree(work)


def test_a_damaged_seal_loses_nothing(tmp_path: Path) -> None:
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[-1]
    size = os.path.getsize(seg)
    flip_byte(seg, size - 3)  # in the seal's CRC
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert os.path.getsize(seg) == size - BATCH_HEADER_SIZE  # cut: it is the last "batch"
    assert log.get_entries(1, 20) == entries(1, 20)
    log.close()
    assert os.path.getsize(seg) == size  # sealed again
    assert reopen_all(tmp_path) == entries(1, 20)


def test_corrupt_record_in_a_sealed_segment(tmp_path: Path) -> None:
    build(tmp_path, 20)
    first_seg = segment_files(tmp_path)[0]
    last_record = record_offset(7)  # record 8, the last of segment 1..8
    flip_byte(first_seg, last_record + REC_HEADER_SIZE + 1)
    with pytest.raises(CorruptLogError, match="in a sealed segment") as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert (err.value.path, err.value.offset) == (str(first_seg), last_record)


def test_truncated_sealed_segment_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, 20)
    middle = segment_files(tmp_path)[1]
    os.truncate(middle, os.path.getsize(middle) - 3)
    with pytest.raises(CorruptLogError, match="past the end of the file") as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.path == str(middle)
    assert err.value.offset == batch_offset(7)


def rewrite_record(seg: Path, at: int, index: int, typ: int) -> None:
    """Give the record at `at` another index and type, with a valid CRC."""
    raw = bytearray(seg.read_bytes())
    _crc, size, _index, term, _typ = struct.unpack_from("<IIQQB", raw, at)
    struct.pack_into("<IQQB", raw, at + 4, size, index, term, typ)
    struct.pack_into("<I", raw, at, zlib.crc32(raw[at + 4 : at + REC_HEADER_SIZE + size]))
    seg.write_bytes(bytes(raw))


@pytest.mark.parametrize(("index", "typ", "match"), [(21, 1, "index 21"), (20, 9, "type 9")])
def test_a_crc_valid_record_that_contradicts_the_log_is_corruption_even_at_the_end(
    tmp_path: Path, index: int, typ: int, match: str
) -> None:
    """No crash writes a valid record with the wrong index or an unknown type."""
    seg = build_crashed(tmp_path, 20)
    rewrite_record(seg, record_offset(3), index, typ)
    with pytest.raises(CorruptLogError, match=match) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.offset == record_offset(3)


def test_a_crc_valid_batch_header_with_the_wrong_index_is_corruption(tmp_path: Path) -> None:
    seg = build_crashed(tmp_path, 20)
    with open(seg, "r+b") as f:
        f.seek(batch_offset(3))
        f.write(encode_batch_header(21, 1, RECORD))
    with pytest.raises(CorruptLogError, match="batch starts at index 21, expected 20"):
        SegmentLogStorage(tmp_path, segment_size=SMALL)


def test_flipping_any_byte_of_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    original = tmp_path / "original"
    build(original, 20)
    seg = segment_files(original)[0]  # batches 1..8, sealed when 9..16 began
    for offset in range(FILE_HEADER_SIZE, os.path.getsize(seg)):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(original, work)
        flip_byte(work / seg.name, offset)
        with pytest.raises(CorruptLogError, match="in a sealed segment") as err:
            SegmentLogStorage(work, segment_size=SMALL)
        assert err.value.path == str(work / seg.name)
        k = (offset - FILE_HEADER_SIZE) // BATCH_OF_ONE
        assert err.value.offset == damage_offset(batch_offset(k), offset), offset
        shutil.rmtree(work)


def test_a_batch_header_inside_a_payload_does_not_fake_a_later_batch(tmp_path: Path) -> None:
    """Headers that the final batch's payload happens to hold (say, a backup of a segment)
    have first indexes no later batch could have there, so the torn batch is still cut."""
    log = SegmentLogStorage(tmp_path)
    log.append_entries(entries(1, 3))
    fake = encode_batch_header(1, 3, 3 * RECORD) + encode_batch_header(10**12, 0, 0)
    log.append_entries([LogEntry(4, 1, EntryType.DATA, fake * 4)])
    log.close()
    seg = unseal(tmp_path)
    flip_byte(seg, FILE_HEADER_SIZE + BATCH_HEADER_SIZE + 3 * RECORD + 1)  # the final header
    assert reopen_all(tmp_path) == entries(1, 3)


def test_missing_middle_segment_is_a_gap(tmp_path: Path) -> None:
    build(tmp_path, 30)
    segs = segment_files(tmp_path)
    segs[1].unlink()
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.path == str(segs[2])
    assert "gap" in str(err.value)


def test_missing_first_segment_is_a_gap(tmp_path: Path) -> None:
    build(tmp_path, 30)
    segs = segment_files(tmp_path)
    segs[0].unlink()
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.path == str(segs[1])


def test_missing_last_segment_is_not_detectable_but_leaves_a_contiguous_log(
    tmp_path: Path,
) -> None:
    # Documented limit: a lost newest file looks like a shorter log. (Segments are only ever
    # deleted newest-first by truncate_suffix, so this cannot come from a crash.)
    build(tmp_path, 30)
    segment_files(tmp_path)[-1].unlink()
    assert reopen_all(tmp_path) == entries(1, 24)


def test_bad_segment_magic(tmp_path: Path) -> None:
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[1]
    flip_byte(seg, 0)
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert (err.value.path, err.value.offset) == (str(seg), 0)
    assert "magic" in str(err.value)


def test_segment_header_crc(tmp_path: Path) -> None:
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[1]
    flip_byte(seg, 12)  # first_index
    with pytest.raises(CorruptLogError, match="header CRC"):
        SegmentLogStorage(tmp_path, segment_size=SMALL)


def test_segment_renamed_to_a_wrong_first_index(tmp_path: Path) -> None:
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[2]
    seg.rename(tmp_path / segment_name(18))
    with pytest.raises(CorruptLogError, match="first index"):
        SegmentLogStorage(tmp_path, segment_size=SMALL)


def test_empty_segment_file_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, 5)
    (tmp_path / segment_name(6)).write_bytes(b"")
    with pytest.raises(CorruptLogError):
        SegmentLogStorage(tmp_path, segment_size=SMALL)


def test_missing_meta_file_with_segments(tmp_path: Path) -> None:
    build(tmp_path, 5)
    (tmp_path / META_NAME).unlink()
    with pytest.raises(CorruptLogError, match="missing"):
        SegmentLogStorage(tmp_path)


def test_corrupt_meta_file(tmp_path: Path) -> None:
    build(tmp_path, 5)
    flip_byte(tmp_path / META_NAME, 14)
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path)
    assert err.value.path == str(tmp_path / META_NAME)


def test_corruption_found_by_a_read_after_open(tmp_path: Path) -> None:
    build(tmp_path, 20)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL, cache_max_entries=0)
    flip_byte(segment_files(tmp_path)[0], record_offset(2) + REC_HEADER_SIZE)
    assert log.get_entry(2) == entry(2)
    with pytest.raises(CorruptLogError) as err:
        log.get_entry(3)
    assert err.value.offset == record_offset(2)
    with pytest.raises(CorruptLogError):
        log.get_entries(1, 5)
    log.close()


# ---- the seal ------------------------------------------------------------------------------


def test_close_seals_what_was_written_since_the_last_seal(tmp_path: Path) -> None:
    seg = tmp_path / segment_name(1)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(1, 3))
    log.close()
    sealed = seg.read_bytes()
    assert sealed.endswith(encode_batch_header(4, 0, 0))
    SegmentLogStorage(tmp_path, segment_size=SMALL).close()  # nothing written: no second seal
    assert seg.read_bytes() == sealed
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(4, 5))  # follows the seal
    log.close()
    raw = seg.read_bytes()
    assert raw.startswith(sealed)
    assert raw.endswith(encode_batch_header(6, 0, 0))
    assert reopen_all(tmp_path) == entries(1, 5)


def test_a_truncation_back_to_a_seal_needs_no_new_one(tmp_path: Path) -> None:
    build(tmp_path, 4, batch=4)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(5, 6))
    log.truncate_suffix(4)  # drops the batch after the seal
    log.close()
    raw = (tmp_path / segment_name(1)).read_bytes()
    assert len(raw) == FILE_HEADER_SIZE + 2 * BATCH_HEADER_SIZE + 4 * RECORD
    assert raw.endswith(encode_batch_header(5, 0, 0))
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.truncate_suffix(2)  # inside the first batch: the seal goes, close writes a new one
    log.close()
    raw = (tmp_path / segment_name(1)).read_bytes()
    assert len(raw) == FILE_HEADER_SIZE + 2 * BATCH_HEADER_SIZE + 2 * RECORD
    assert raw.endswith(encode_batch_header(3, 0, 0))
    assert reopen_all(tmp_path) == entries(1, 2)


def test_sync_off_writes_no_seal(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, sync=False)
    log.append_entries(entries(1, 3))
    log.close()
    assert os.path.getsize(tmp_path / segment_name(1)) == record_offset(0) + 3 * RECORD


def test_a_failed_seal_at_close_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every batch was synced when its append returned: without the seal, the next open only
    treats the last batch as possibly torn, as after a crash."""
    log = SegmentLogStorage(tmp_path)
    log.append_entries(entries(1, 3))

    def fail(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", fail)
    with caplog.at_level(logging.WARNING, logger="storage.log_storage"):
        log.close()
    assert "could not seal" in caplog.text
    monkeypatch.undo()
    assert reopen_all(tmp_path) == entries(1, 3)


# ---- sync off: many batches may be unsynced ------------------------------------------------


def test_sync_off_cuts_at_the_first_damage_of_the_newest_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SegmentLogStorage(tmp_path, segment_size=SMALL, sync=False)
    for i in range(1, 7):
        log.append_entries([entry(i)])
    log.close()  # no sync, no seal: any of the six batches may be torn
    seg = tmp_path / segment_name(1)
    flip_byte(seg, record_offset(2) + REC_HEADER_SIZE)
    with pytest.raises(CorruptLogError, match="followed by a later batch"):
        SegmentLogStorage(tmp_path, segment_size=SMALL)  # sync on: that would be corruption
    with caplog.at_level(logging.WARNING, logger=RECOVERY_LOGGER):
        assert reopen_all(tmp_path, sync=False) == entries(1, 2)
    assert warned_cut(caplog, seg, batch_offset(2)), caplog.text
    assert os.path.getsize(seg) == batch_offset(2)


def test_sync_off_still_refuses_damage_before_a_seal_or_in_a_sealed_segment(
    tmp_path: Path,
) -> None:
    build(tmp_path, 20)  # with sync on: the newest segment ends with a seal
    flip_byte(segment_files(tmp_path)[-1], record_offset(1) + REC_HEADER_SIZE)
    with pytest.raises(CorruptLogError, match="followed by a later seal"):
        SegmentLogStorage(tmp_path, segment_size=SMALL, sync=False)
    flip_byte(segment_files(tmp_path)[-1], record_offset(1) + REC_HEADER_SIZE)  # repaired
    flip_byte(segment_files(tmp_path)[0], record_offset(1) + REC_HEADER_SIZE)
    with pytest.raises(CorruptLogError, match="in a sealed segment"):
        SegmentLogStorage(tmp_path, segment_size=SMALL, sync=False)


# ---- crashes in the middle of multi-step operations ----------------------------------------


def test_interrupted_reset_leaves_no_old_segment_alive(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    tmp_path = tmp_path / "log"
    """reset writes the new generation first; if the crash comes before the old segments are
    deleted, they must be recognised as stale, even those at indexes above the new start."""
    build(tmp_path, 30)
    shutil.copytree(tmp_path, saved)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.reset(12)
    log.close()
    for seg in segment_files(saved):  # the deletions "did not happen"
        shutil.copy(seg, tmp_path / seg.name)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert (log.first_log_index(), log.last_log_index()) == (11 + 1, 11)
    assert segment_files(tmp_path) == []
    log.append_entries(entries(12, 14, term=5))
    log.close()
    assert reopen_all(tmp_path) == entries(12, 14, term=5)


def test_interrupted_truncate_prefix_deletes_segments_below(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    tmp_path = tmp_path / "log"
    build(tmp_path, 30)
    shutil.copytree(tmp_path, saved)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.truncate_prefix(20)
    log.close()
    assert [p.name for p in segment_files(tmp_path)] == [segment_name(17), segment_name(25)]
    for seg in segment_files(saved):
        shutil.copy(seg, tmp_path / seg.name)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert log.get_entries(0, 100) == entries(20, 30)
    log.close()
    assert [p.name for p in segment_files(tmp_path)] == [segment_name(17), segment_name(25)]


def test_interrupted_truncate_suffix_leaves_a_contiguous_prefix(tmp_path: Path) -> None:
    # truncate_suffix deletes newest segments first: any subset of deletions that a crash
    # leaves is a contiguous log.
    build(tmp_path, 30)
    segment_files(tmp_path)[-1].unlink()
    assert reopen_all(tmp_path) == entries(1, 24)
    segment_files(tmp_path)[-1].unlink()
    assert reopen_all(tmp_path) == entries(1, 16)


# ---- truncate_suffix inside a batch, and crashes in the middle of it -----------------------


def three_batches(path: Path) -> SegmentLogStorage:
    """A log whose one segment holds the batches 1..4, 5..10 and 11..12."""
    log = SegmentLogStorage(path)
    for first, last in ((1, 4), (5, 10), (11, 12)):
        log.append_entries(entries(first, last))
    return log


B_AT = FILE_HEADER_SIZE + BATCH_HEADER_SIZE + 4 * RECORD  # batch 5..10
C_AT = B_AT + BATCH_HEADER_SIZE + 6 * RECORD  # batch 11..12
RECORD_8_AT = B_AT + BATCH_HEADER_SIZE + 3 * RECORD


def test_truncate_suffix_inside_a_batch_rewrites_its_header_in_place(tmp_path: Path) -> None:
    log = three_batches(tmp_path)
    seg = tmp_path / segment_name(1)
    inode = os.stat(seg).st_ino
    log.truncate_suffix(7)
    raw = seg.read_bytes()
    assert len(raw) == RECORD_8_AT
    assert raw[B_AT : B_AT + BATCH_HEADER_SIZE] == encode_batch_header(5, 3, 3 * RECORD)
    assert os.stat(seg).st_ino == inode
    log.truncate_suffix(4)  # at a batch boundary: the whole batch goes
    assert os.path.getsize(seg) == B_AT
    log.close()
    assert reopen_all(tmp_path) == entries(1, 4)


# What reopening finds after a crash following each step of the cut of 5..10 after 7 (the
# step count is the number of fsyncs done): nothing changed, 11..12 dropped (8..10 come back:
# harmless, the truncation never returned), batch 5..10 counting only 5..7 (the stale records
# 8..10 are cut as a torn tail), done.
@pytest.mark.parametrize(("crash_after", "last"), [(0, 12), (1, 10), (2, 7), (3, 7)])
def test_an_interrupted_truncate_suffix_inside_a_batch_leaves_a_valid_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_after: int, last: int
) -> None:
    log = three_batches(tmp_path)
    steps = [0]
    real_fsync = os.fsync

    def fsync_then_crash(fd: int) -> None:
        real_fsync(fd)
        steps[0] += 1
        if steps[0] == crash_after:
            raise OSError(errno.EIO, "simulated crash")

    def crash(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(os, "fsync", fsync_then_crash)
    if crash_after == 0:
        monkeypatch.setattr(os, "ftruncate", crash)
    with pytest.raises(StorageError, match="simulated crash"):
        log.truncate_suffix(7)
    monkeypatch.undo()
    log.close()  # a failed log writes nothing more (no seal)
    assert reopen_all(tmp_path) == entries(1, last)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.truncate_suffix(7)
    log.append_entries(entries(8, 9, term=2))
    log.close()
    assert reopen_all(tmp_path) == entries(1, 7) + entries(8, 9, term=2)


def header_across_a_sector(path: Path) -> SegmentLogStorage:
    """A log whose second batch (2..6) has its header's count, length and crc (bytes 16..27)
    across a 512-byte boundary: it starts at 32 + 28 + 25 + 404 = 489."""
    log = SegmentLogStorage(path)
    log.append_entries([entry(1, size=404)])
    log.append_entries(entries(2, 6))
    return log


def test_a_header_across_a_sector_is_never_rewritten_in_place(tmp_path: Path) -> None:
    """A torn in-place rewrite would invalidate a synced header (and recovery would drop its
    acknowledged entries), so the kept part of the file is replaced atomically instead."""
    log = header_across_a_sector(tmp_path)
    seg = tmp_path / segment_name(1)
    inode = os.stat(seg).st_ino
    log.truncate_suffix(3)
    assert os.stat(seg).st_ino != inode
    kept = [entry(1, size=404), *entries(2, 3)]
    assert log.get_entries(1, 3) == kept
    log.append_entries(entries(4, 5, term=2))
    assert log.get_entries(1, 5) == kept + entries(4, 5, term=2)
    log.close()
    assert reopen_all(tmp_path) == kept + entries(4, 5, term=2)


def test_an_interrupted_rewrite_of_the_kept_part_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = header_across_a_sector(tmp_path)

    def crash(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError, match="simulated crash"):
        log.truncate_suffix(3)
    monkeypatch.undo()
    log.close()
    assert list(tmp_path.glob("*.tmp"))  # the new content, never renamed
    assert reopen_all(tmp_path) == [entry(1, size=404), *entries(2, 6)]
    assert not list(tmp_path.glob("*.tmp"))


def index_of(seg: Segment) -> tuple[object, ...]:
    return (
        list(seg.offsets),
        list(seg.terms),
        bytes(seg.headers_after),
        list(seg.batch_offsets),
        list(seg.batch_firsts),
        seg.size,
    )


def test_the_index_kept_while_writing_is_the_one_recovery_builds(tmp_path: Path) -> None:
    """After appends, seals and cuts of every kind, the newest segment's in-memory index
    matches what recovery reads back from the file, and every payload size is right."""
    log = header_across_a_sector(tmp_path)  # batches 1 and 2..6
    expected = [entry(1, size=404), *entries(2, 6)]

    def check() -> None:
        if not expected and not log._segments:
            return  # an empty segment is deleted at open
        seg = log._segments[-1]
        scanned = scan_segment(seg.path.read_bytes(), seg.path, 1, 0, Tail.LAST_BATCH)
        assert index_of(seg) == index_of(scanned)
        sizes = [seg.payload_size(k) for k in range(len(seg.offsets))]
        assert sizes == [len(e.data) for e in expected]
        if expected:
            assert seg.read(log._fd(seg), 1, len(expected)) == expected
        assert log.get_entries(1, 100) == expected

    def reopen() -> None:
        nonlocal log
        log.close()  # seals
        log = SegmentLogStorage(tmp_path)

    check()
    for step in range(4):
        reopen()
        check()
        first = len(expected) + 1
        batch = entries(first, first + step, term=step + 2, size=step * 7)
        log.append_entries(batch)
        expected += batch
        check()
    cuts = [len(expected) - 1, 7, 6, 4, 1, 0]  # inside, at boundaries, after a seal, everything
    for kept in cuts:
        log.truncate_suffix(kept)
        del expected[kept:]
        check()
        reopen()
        check()
    log.close()


# ---- failing I/O ---------------------------------------------------------------------------


def test_failed_write_leaves_the_log_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(1, 3))
    real_pwrite = os.pwrite

    def short_then_enospc(fd: int, data: bytes, offset: int) -> int:
        real_pwrite(fd, bytes(data)[:7], offset)  # a partial write, then the disk is full
        monkeypatch.setattr(os, "pwrite", fail)
        return 7

    def fail(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", short_then_enospc)
    with pytest.raises(StorageError, match="No space"):
        log.append_entries(entries(4, 6))
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert log.last_log_index() == 3
    log.append_entries(entries(4, 5, term=2))
    log.close()
    assert reopen_all(tmp_path) == entries(1, 3) + entries(4, 5, term=2)


def test_failed_fsync_stops_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLogStorage(tmp_path)
    log.append_entries(entries(1, 3))

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(StorageError, match="fdatasync"):
        log.append_entries(entries(4, 4))
    monkeypatch.undo()
    # The durable state is unknown now: nothing more is accepted until a restart recovers.
    with pytest.raises(StorageError, match="failed earlier"):
        log.append_entries(entries(5, 5))
    with pytest.raises(StorageError, match="failed earlier"):
        log.truncate_suffix(2)
    log.close()


# ---- sync off, caches, descriptors ---------------------------------------------------------


def test_sync_off_appends_without_fdatasync_until_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log = SegmentLogStorage(tmp_path, sync=False)
    log.append_entries(entries(1, 10))
    log.append_entries(entries(11, 20))
    assert calls == []
    log.sync()
    assert len(calls) == 1
    log.sync()  # nothing pending
    assert len(calls) == 1
    log.close()
    assert reopen_all(tmp_path) == entries(1, 20)


def test_sync_on_is_one_fdatasync_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log = SegmentLogStorage(tmp_path)
    log.append_entries(entries(1, 256))
    log.append_entries(entries(257, 300))
    assert len(calls) == 2
    log.close()
    assert len(calls) == 3  # the seal


def test_sealing_a_segment_syncs_it_even_with_sync_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery treats damage in a sealed segment as corruption, so it must be durable."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log = SegmentLogStorage(tmp_path, segment_size=SMALL, sync=False)
    for i in range(1, 10):
        log.append_entries([entry(i)])
    assert len(calls) == 1  # when segment 1..8 was sealed, before segment 9 was created
    log.close()


def test_cache_is_bounded_by_entries(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, cache_max_entries=5)
    log.append_entries(entries(1, 20))
    log.append_entries(entries(21, 22))
    assert log._cache_first == 18
    assert len(log._cache) == 5
    assert log.get_entries(1, 22) == entries(1, 22)
    log.truncate_suffix(19)
    assert (log._cache_first, len(log._cache)) == (18, 2)
    log.truncate_suffix(10)
    assert (log._cache_first, len(log._cache)) == (11, 0)
    log.close()


def test_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, cache_max_entries=1000, cache_max_bytes=1000)
    big = [LogEntry(i, 1, EntryType.DATA, bytes([i]) * 300) for i in range(1, 11)]
    log.append_entries(big)
    assert log._cache_first == 8  # the last 3 entries (900 bytes) fit
    assert log.get_entries(1, 10) == big
    assert log.get_entries(1, 10, max_bytes=650) == big[:2]
    assert log.get_entries(6, 10, max_bytes=650) == big[5:7]
    log.close()


def test_descriptors_stay_bounded(tmp_path: Path) -> None:
    build(tmp_path, 200)  # 25 segments
    fds_before = len(os.listdir("/proc/self/fd"))
    log = SegmentLogStorage(tmp_path, segment_size=SMALL, cache_max_entries=0, max_open_files=3)
    for _ in range(2):
        assert log.get_entries(1, 200) == entries(1, 200)
        for i in range(200, 0, -7):
            assert log.get_entry(i) == entry(i)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 4
    log.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before


def test_truncate_suffix_into_an_older_segment_then_grow_again(tmp_path: Path) -> None:
    log = SegmentLogStorage(tmp_path, segment_size=SMALL, cache_max_entries=0, max_open_files=1)
    log.append_entries(entries(1, 40))
    assert log.get_entries(1, 40) == entries(1, 40)  # opens (and evicts) older segments
    log.truncate_suffix(3)
    assert [p.name for p in segment_files(tmp_path)] == [segment_name(1)]
    log.append_entries(entries(4, 30, term=2))
    expected = entries(1, 3) + entries(4, 30, term=2)
    assert log.get_entries(1, 30) == expected
    log.close()
    assert reopen_all(tmp_path) == expected
