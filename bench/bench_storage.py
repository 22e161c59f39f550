"""Throughput of SegmentLogStorage: appends (group commit) and reads. A script, not a test.

    python bench/bench_storage.py [--seconds 1.0] [--payload 100] [--dir /tmp]

Prints entries/s for appends of `payload`-byte entries in batches of 1, 16 and 256 with fsync on
and off, then for reads: recent entries (served by the in-memory cache) via get_entries and
get_entry, and older entries (read from the segment files, CRC-checked). Targets: batches of 256
with fsync on >= 100,000 entries/s; recent reads >= 300,000 entries/s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.entry import EntryType, LogEntry
from storage.log_storage import SegmentLogStorage

READ_CHUNK = 256  # entries per get_entries call, like one AppendEntries' worth


def timed(seconds: float, step: Callable[[], int]) -> float:
    """Run `step` (which returns how many entries it handled) for about `seconds`; entries/s."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        done += step()
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def bench_append(root: Path, sync: bool, batch: int, payload: int, seconds: float) -> float:
    log = SegmentLogStorage(root / f"append-{sync}-{batch}", sync=sync)
    data = b"x" * payload
    next_index = [1]

    def step() -> int:
        first = next_index[0]
        log.append_entries(
            [LogEntry(i, 1, EntryType.DATA, data) for i in range(first, first + batch)]
        )
        next_index[0] = first + batch
        return batch

    try:
        return timed(seconds, step)
    finally:
        log.close()


def bench_reads(root: Path, payload: int, seconds: float) -> dict[str, float]:
    log = SegmentLogStorage(root / "reads", sync=False)
    total = 200_000
    data = b"y" * payload
    for first in range(1, total + 1, 1024):
        log.append_entries(
            [LogEntry(i, 1, EntryType.DATA, data) for i in range(first, first + 1024)]
        )
    log.sync()
    last = log.last_log_index()
    recent_first = last - 2047  # well inside the cache (the last 4096 entries)
    old_last = last // 2  # long out of the cache
    results: dict[str, float] = {}
    cursor = [0]

    def recent_range() -> int:
        lo = recent_first + cursor[0] % 2048
        cursor[0] += READ_CHUNK
        return len(log.get_entries(lo, lo + READ_CHUNK - 1, max_bytes=512 * 1024))

    def recent_single() -> int:
        base = recent_first + cursor[0] % 2048
        cursor[0] += 100
        for i in range(base, base + 100):
            log.get_entry(i)
        return 100

    def old_range() -> int:
        lo = 1 + cursor[0] % old_last
        cursor[0] += READ_CHUNK
        return len(log.get_entries(lo, lo + READ_CHUNK - 1, max_bytes=512 * 1024))

    def old_single() -> int:
        base = 1 + cursor[0] % old_last
        cursor[0] += 100
        for i in range(base, base + 100):
            log.get_entry(i)
        return 100

    def old_term() -> int:
        base = 1 + cursor[0] % old_last
        cursor[0] += 100
        for i in range(base, base + 100):
            log.get_term(i)
        return 100

    try:
        for name, step in [
            (f"recent get_entries ({READ_CHUNK}/call)", recent_range),
            ("recent get_entry", recent_single),
            (f"old get_entries ({READ_CHUNK}/call)", old_range),
            ("old get_entry", old_single),
            ("old get_term", old_term),
        ]:
            cursor[0] = 0
            results[name] = timed(seconds, step)
        start = time.perf_counter()
        log.close()
        log = SegmentLogStorage(root / "reads")
        results[f"reopen (scan {total} entries)"] = total / (time.perf_counter() - start)
    finally:
        log.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--payload", type=int, default=100, help="bytes per entry")
    parser.add_argument("--dir", default="/tmp", help="where to make the temporary log")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    try:
        print(f"SegmentLogStorage, {args.payload}-byte entries, in {root}")
        print(f"{'append':<34}{'fsync on':>14}{'fsync off':>14}")
        for batch in (1, 16, 256):
            on = bench_append(root, True, batch, args.payload, args.seconds)
            off = bench_append(root, False, batch, args.payload, args.seconds)
            print(f"{f'batch {batch}':<34}{on:>14,.0f}{off:>14,.0f}   entries/s")
        print(f"{'read':<34}{'':>14}")
        for name, rate in bench_reads(root, args.payload, args.seconds).items():
            print(f"{name:<34}{rate:>14,.0f}   entries/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
