"""A stopped peer's data, read from its directory: what a restart would rebuild (and, for any
peer, how many bytes its directory holds).

For audits and tools (the chaos runner's convergence check, the tests, the benchmarks), never
for a running peer: it opens the storages itself. A peer's state is its newest snapshot plus the
log entries after it; the log may start before that snapshot (the compaction margin) but not
after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from actors.service.kv_store import KVStateMachine
from actors.state_machine import Command
from storage.entry import EntryType, LogEntry
from storage.errors import CorruptLogError
from storage.log_storage import SegmentLogStorage
from storage.snapshot_storage import SnapshotMeta, SnapshotStorage

APPLY_BATCH = 1024


@dataclass
class PeerDisk:
    """`entries` are the log's, from its first index through `upto` (the whole log by
    default); `state` is the snapshot with every DATA entry after it through `upto` applied."""

    snapshot: SnapshotMeta | None
    first_log_index: int
    entries: list[LogEntry] = field(default_factory=list)
    state: KVStateMachine = field(default_factory=KVStateMachine)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.last_index if self.snapshot is not None else 0


def read_peer_disk(peer_dir: Path, upto: int | None = None) -> PeerDisk:
    """Read `peer_dir` (`log/`, `snapshot/`) of a stopped peer that ran with fsync on.
    Raises StorageError if the log does not continue the snapshot (a hole) or is damaged."""
    snapshots = SnapshotStorage(peer_dir / "snapshot")
    log = SegmentLogStorage(peer_dir / "log", sync=True)  # the strict recovery rule
    try:
        disk = PeerDisk(snapshots.latest(), log.first_log_index())
        if disk.snapshot is not None:
            with snapshots.open(disk.snapshot.last_index) as reader:
                disk.state.on_snapshot_load(reader)
        last = log.last_log_index() if upto is None else min(upto, log.last_log_index())
        disk.entries = list(_read(log, log.first_log_index(), last))
    finally:
        log.close()
        snapshots.close()
    after = [e for e in disk.entries if e.index > disk.snapshot_index]
    if after and after[0].index != disk.snapshot_index + 1:
        raise CorruptLogError(
            f"{peer_dir}: the log resumes at {after[0].index}, after snapshot {disk.snapshot_index}"
        )
    commands = [Command(e.index, e.term, e.data) for e in after if e.type == EntryType.DATA]
    for start in range(0, len(commands), APPLY_BATCH):
        disk.state.on_apply(commands[start : start + APPLY_BATCH])
    return disk


def disk_bytes(path: Path) -> int:
    """Bytes in the files under `path` (a peer's data directory, its log, its snapshots).
    Safe on a running peer's directory: a file deleted meanwhile (a compacted segment, a
    retired snapshot) is skipped."""
    total = 0
    for file in path.rglob("*"):
        try:
            if file.is_file():
                total += file.stat().st_size
        except OSError:
            continue
    return total


def _read(log: SegmentLogStorage, first: int, last: int) -> Iterator[LogEntry]:
    index = first
    while index <= last:
        batch = log.get_entries(index, min(last, index + 4095))
        if not batch:
            raise RuntimeError(f"log entry {index} unreadable")
        yield from batch
        index = batch[-1].index + 1
