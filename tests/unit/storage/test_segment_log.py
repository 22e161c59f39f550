"""SegmentLogStorage beyond the contract: the files it writes, recovery after crashes and
damage, failing I/O, and resource limits."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest

from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError, StorageError
from storage.log_storage import META_NAME, SegmentLogStorage
from storage.segment import FILE_HEADER_SIZE, REC_HEADER_SIZE, segment_name

SMALL = 300  # bytes per segment: 7 records of 10-byte payloads (35 bytes each) per segment
PAYLOAD = 10
RECORD = REC_HEADER_SIZE + PAYLOAD


def entry(index: int, term: int = 1, size: int = PAYLOAD) -> LogEntry:
    data = (f"{index}@{term}:".encode() * size)[:size]
    return LogEntry(index, term, EntryType.DATA, data)


def entries(first: int, last: int, term: int = 1) -> list[LogEntry]:
    return [entry(i, term) for i in range(first, last + 1)]


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def build(path: Path, last: int, segment_size: int = SMALL, batch: int = 1) -> None:
    """A closed log at `path` holding entries(1, last), appended `batch` at a time."""
    log = SegmentLogStorage(path, segment_size=segment_size)
    for first in range(1, last + 1, batch):
        log.append_entries(entries(first, min(first + batch - 1, last)))
    log.close()


def reopen_all(path: Path) -> list[LogEntry]:
    log = SegmentLogStorage(path, segment_size=SMALL)
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


def record_offset(k: int) -> int:
    """File offset of the k-th record (from 0) of a segment of PAYLOAD-byte entries."""
    return FILE_HEADER_SIZE + k * RECORD


# ---- files and format ----------------------------------------------------------------------


def test_creates_the_directory_and_names_segments_by_first_index(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b"
    build(path, 20)
    names = [p.name for p in segment_files(path)]
    # A new segment starts once one reaches SMALL bytes: 8 records fit (32 + 8*35 = 312).
    assert names == [segment_name(1), segment_name(9), segment_name(17)]
    assert (path / META_NAME).exists()
    assert (path / segment_name(9)).read_bytes()[:8] == b"PKRFTSEG"
    assert os.path.getsize(path / segment_name(1)) == record_offset(8)


def test_a_batch_is_never_split_across_segments(tmp_path: Path) -> None:
    build(tmp_path, 40, batch=16)
    assert [p.name for p in segment_files(tmp_path)] == [
        segment_name(1),
        segment_name(17),
        segment_name(33),
    ]
    assert reopen_all(tmp_path) == entries(1, 40)


def test_record_layout_is_the_documented_one(tmp_path: Path) -> None:
    import struct
    import zlib

    log = SegmentLogStorage(tmp_path)
    log.append_entries([LogEntry(1, 7, EntryType.CONFIGURATION, b"abc")])
    log.close()
    raw = (tmp_path / segment_name(1)).read_bytes()
    magic, version, _, first, generation, crc = struct.unpack_from("<8sHHQQI", raw)
    assert (magic, version, first, generation) == (b"PKRFTSEG", 1, 1, 0)
    assert crc == zlib.crc32(raw[:28])
    crc, length, index, term, typ = struct.unpack_from("<IIQQB", raw, 32)
    assert (length, index, term, typ) == (3, 1, 7, 2)
    assert raw[57:] == b"abc"
    assert crc == zlib.crc32(raw[36:])


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


# ---- torn tails: cut off, with a warning ---------------------------------------------------


def test_cut_at_every_byte_of_the_last_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash mid-append leaves any prefix of the last record: it must be dropped (never
    acknowledged), the rest kept, and new appends must continue correctly."""
    original = tmp_path / "original"
    build(original, 20)  # the last segment holds 17..20
    last_seg = segment_files(original)[-1]
    size = os.path.getsize(last_seg)
    start = size - RECORD
    assert start == record_offset(3)
    for cut in range(start, size):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(original, work)
        os.truncate(work / last_seg.name, cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="storage.log_storage"):
            log = SegmentLogStorage(work, segment_size=SMALL)
        if cut > start:
            assert any(
                last_seg.name in r.getMessage() and f"offset {start}" in r.getMessage()
                for r in caplog.records
            ), caplog.text
        assert log.last_log_index() == 19
        assert log.get_entries(1, 19) == entries(1, 19)
        assert os.path.getsize(work / last_seg.name) == start
        log.append_entries(entries(20, 22, term=2))
        log.close()
        assert reopen_all(work) == entries(1, 19) + entries(20, 22, term=2)
        shutil.rmtree(work)


def test_torn_last_record_in_a_fresh_segment(tmp_path: Path) -> None:
    build(tmp_path, 9)  # segment 9 holds just record 9
    seg = tmp_path / segment_name(9)
    for cut in (FILE_HEADER_SIZE + 1, FILE_HEADER_SIZE + REC_HEADER_SIZE + 2):
        os.truncate(seg, cut)
        assert reopen_all(tmp_path) == entries(1, 8)
        assert os.path.getsize(seg) == FILE_HEADER_SIZE
    log = SegmentLogStorage(tmp_path, segment_size=SMALL)
    log.append_entries(entries(9, 10, term=3))
    log.close()
    assert reopen_all(tmp_path) == entries(1, 8) + entries(9, 10, term=3)


@pytest.mark.parametrize("where", ["crc", "length-low", "index", "payload", "last-byte"])
def test_complete_looking_last_record_with_bad_crc_is_torn(tmp_path: Path, where: str) -> None:
    """Nothing valid follows the final record, so a crash may have produced it: torn."""
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[-1]
    start = record_offset(3)
    offset = {
        "crc": start,
        "length-low": start + 4,
        "index": start + 8,
        "payload": start + REC_HEADER_SIZE + 3,
        "last-byte": start + RECORD - 1,
    }[where]
    flip_byte(seg, offset)
    assert reopen_all(tmp_path) == entries(1, 19)


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    """Some file systems show a crashed, extended-but-unwritten tail as zeros."""
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(bytes(500))
    assert reopen_all(tmp_path) == entries(1, 20)
    assert os.path.getsize(seg) == record_offset(4)


# ---- corruption: refuse to open, naming file and offset ------------------------------------


def test_bad_last_record_followed_by_non_zero_garbage_is_corruption(tmp_path: Path) -> None:
    """A crash tears off the end of what was written; it does not append garbage after it."""
    build(tmp_path, 20)
    seg = segment_files(tmp_path)[-1]
    flip_byte(seg, record_offset(3) + REC_HEADER_SIZE)
    with open(seg, "ab") as f:
        f.write(b"\x01" * 40)
    with pytest.raises(CorruptLogError, match="followed by more data") as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.offset == record_offset(3)


@pytest.mark.parametrize("k", [0, 1, 2])  # records 17, 18, 19 of the last segment (17..20)
def test_flipping_any_byte_of_a_record_followed_by_others_is_corruption(
    tmp_path: Path, k: int
) -> None:
    original = tmp_path / "original"
    build(original, 20)
    name = segment_files(original)[-1].name
    start = record_offset(k)
    for offset in range(start, start + RECORD):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(original, work)
        flip_byte(work / name, offset)
        with pytest.raises(CorruptLogError) as err:
            SegmentLogStorage(work, segment_size=SMALL)
        assert err.value.path == str(work / name)
        assert err.value.offset == start, f"flipped byte at {offset}"
        assert name in str(err.value)
        shutil.rmtree(work)


def test_corrupt_record_in_a_sealed_segment(tmp_path: Path) -> None:
    build(tmp_path, 20)
    first_seg = segment_files(tmp_path)[0]
    last_record = record_offset(7)  # record 8, the last of segment 1..8
    flip_byte(first_seg, last_record + REC_HEADER_SIZE + 1)
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert (err.value.path, err.value.offset) == (str(first_seg), last_record)


def test_truncated_sealed_segment_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, 20)
    middle = segment_files(tmp_path)[1]
    os.truncate(middle, os.path.getsize(middle) - 3)
    with pytest.raises(CorruptLogError) as err:
        SegmentLogStorage(tmp_path, segment_size=SMALL)
    assert err.value.path == str(middle)
    assert err.value.offset == record_offset(7)


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
