"""LogView: the log as Replicators and the FSMCaller read it, safely from any thread.

The LogManager actor writes it (the `writers` methods), with one exception: while this peer
leads, from LeaderLogReady until the Node steps down, the Node's thread appends the leader's
entries (actors/leader_log.py) and the LogManager only persists them, trims the tail's durable
head and compacts. So the log's end (`append_unstable`, `last_index`, `last_term`) has one
writer at a time, handed over causally through mailboxes; the durable prefix has one writer,
the LogManager. Readers run on other actors' threads; this is the one structure of a node
shared across threads (docs/DESIGN.md, principle 2 and "Threads"), so it is explicitly
thread-safe:

- The in-memory tail (`_tail`, entries `_tail_first`..`last_index`) holds every entry not yet
  durable plus a bounded run of recent durable ones. It is guarded by `_tail_lock`, which is never
  held across I/O, so readers are not stalled by an fsync.
- Older entries are read from storage under `_storage_lock`, which the writer also holds while it
  appends (and fsyncs) or truncates: storage objects are not thread-safe.
- The configurations (`_confs`, `conf_state`) change under `_conf_lock`: a leader's
  configuration entry (Node thread) may be appended while a compaction (LogManager thread)
  moves the base.

Snapshots: entries up to `snapshot_index` are covered by the newest snapshot and may have been
compacted away, so the log may start after 1. The snapshot's last entry keeps a known term
(`snapshot_term`), which is what an AppendEntries right after it needs (`known_term`); entries
compacted away have no known term, and a leader sends such a follower the snapshot instead.

Configurations (actors/configuration.py, ConfigurationLog): a configuration takes effect when
appended (Raft dissertation §4.1), so the LogView keeps the configurations of its own log, and
publishes the newest as `conf_state` (one immutable object: index, configuration, the previous
one) whenever an append, a truncation or a snapshot changes it. Before any configuration entry
it is the snapshot's, else the bootstrap one (`bootstrap_conf`).

Invariants: first_index <= stable_index + 1; stable_index <= last_index; the tail is contiguous
and `_tail_first <= stable_index + 1` (every non-durable entry is in the tail); with a snapshot,
first_index <= snapshot_index + 1 <= last_index + 1 and committed_index >= snapshot_index.
The scalar attributes are plain ints, published by the writer and read without a lock (a Python
attribute read is atomic); a reader may see a slightly old value, never a torn one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from actors.configuration import Configuration, ConfigurationLog, ConfState
from storage.base import LogStorage
from storage.entry import EntryType, LogEntry, clip_to_bytes
from storage.errors import CorruptLogError
from storage.snapshot_storage import SnapshotMeta

log = logging.getLogger(__name__)


class AppendLedger:
    """How many FollowerAppends were handed to the LogManager, and how many it has answered
    (acked, or dropped without an answer): the log is quiet when they are equal
    (actors/quiet_heartbeat.py). `answered` has one writer, the LogManager, which counts after
    it sends; `handed` is counted under a lock, as the Router and the Node hand them over (on
    one thread when the transport is hosted on the dispatcher, else on two). A stale read only
    sends a heartbeat the long way."""

    __slots__ = ("_lock", "answered", "closed", "handed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.handed = 0
        self.answered = 0
        self.closed = False  # the LogManager is in ERROR: it answers nothing any more

    def hand(self) -> None:
        """Count one FollowerAppend, before it is told."""
        with self._lock:
            self.handed += 1

    def quiet(self) -> bool:
        return self.handed == self.answered and not self.closed


class LogView:
    def __init__(
        self,
        storage: LogStorage,
        tail_entries: int = 8192,
        snapshot: SnapshotMeta | None = None,
        bootstrap_conf: Configuration | None = None,
    ) -> None:
        """`snapshot`: the newest snapshot, if any; the log is reconciled with it first
        (`reconcile_with_snapshot`), so this may write to storage (before any actor runs).
        `bootstrap_conf`: the configuration while the log and snapshot hold none (None: no
        voter at all). Raises CorruptLogError when a configuration in them does not decode."""
        self._storage = storage
        self._storage_lock = threading.Lock()
        self._tail_lock = threading.Lock()
        self._conf_lock = threading.Lock()
        self._tail_cap = tail_entries
        reconcile_with_snapshot(storage, snapshot)
        self.snapshot_index = snapshot.last_index if snapshot else 0
        self.snapshot_term = snapshot.last_term if snapshot else 0
        self.first_index = storage.first_log_index()
        self.last_index = max(storage.last_log_index(), self.snapshot_index)
        self._tail: list[LogEntry] = []
        self._tail_first = self.last_index + 1
        self.last_term = self.term_at(self.last_index)
        self.stable_index = self.last_index
        self.committed_index = self.snapshot_index  # a snapshot holds committed entries only
        # The one field the LogManager does not write: the FSMCaller publishes its progress here
        # (a single writer still), so that status never has to ask the FSMCaller.
        self.applied_index = self.snapshot_index
        # The peer's cluster id (actors/identity.py; "" = none yet): set by the peer's assembly
        # and by the LogManager when a joining peer adopts its leader's. Carried in every
        # request a Replicator sends.
        self.cluster_id = ""
        # FollowerAppends handed to the LogManager and answered (actors/quiet_heartbeat.py).
        self.appends = AppendLedger()
        if snapshot is not None:
            base = _decode_conf(snapshot.conf, snapshot.last_index)
            self._confs = ConfigurationLog(base, snapshot.last_index)
        else:
            self._confs = ConfigurationLog(bootstrap_conf or Configuration.of(()))
        self._scan_configurations(self.snapshot_index + 1)
        self.conf_state: ConfState = self._confs.state()

    @property
    def conf(self) -> Configuration:
        """The configuration in force at the end of this log (any thread)."""
        return self.conf_state.conf

    def _scan_configurations(self, first: int, batch: int = 4096) -> None:
        """At start: record every configuration entry from `first` to the end of the log."""
        index = max(first, self.first_index)
        while index <= self.last_index:
            chunk = self.entries(index, min(index + batch - 1, self.last_index))
            if not chunk:
                raise CorruptLogError(f"entry {index} is not readable")
            self._track_configurations(chunk)
            index = chunk[-1].index + 1

    # -- reads: any thread ------------------------------------------------------------------

    def term_at(self, index: int) -> int:
        """The term of the entry at `index`; 0 if there is none (index 0 has term 0)."""
        with self._tail_lock:
            if self._tail_first <= index <= self.last_index:
                return self._tail[index - self._tail_first].term
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.first_index or index > self.last_index:
            return 0
        with self._storage_lock:
            return self._storage.get_term(index)

    def known_term(self, index: int) -> int | None:
        """The term of the entry at `index` (0 for index 0), or None when it is not known here:
        compacted away (before the log's first entry, and not the snapshot's last one), or
        after the log's end."""
        if index == 0:
            return 0
        with self._tail_lock:
            if self._tail_first <= index <= self.last_index:
                return self._tail[index - self._tail_first].term
        if index == self.snapshot_index:
            return self.snapshot_term
        if index > self.last_index:
            return None
        with self._storage_lock:  # the storage's own first index: compaction may be under way
            if index < self._storage.first_log_index():
                return None
            return self._storage.get_term(index) or None

    def entries(self, first: int, last: int, max_bytes: int = 0) -> list[LogEntry]:
        """Entries first..last (clipped to the log). With max_bytes > 0 the payloads stop before
        exceeding it, but at least one entry is returned when one exists."""
        first = max(first, self.first_index)
        with self._tail_lock:
            tail_first = self._tail_first
            last = min(last, self.last_index)
            if first > last:
                return []
            if first >= tail_first:
                return clip_to_bytes(
                    self._tail[first - tail_first : last - tail_first + 1], max_bytes
                )
            # A copy taken under the lock: the writer may trim the tail once we let go, but only
            # of entries that are durable, which storage then serves.
            tail_part = self._tail[: last - tail_first + 1] if last >= tail_first else []
        with self._storage_lock:
            out = self._storage.get_entries(first, min(last, tail_first - 1), max_bytes)
        if out and out[-1].index == tail_first - 1:  # storage gave the whole run: no gap
            out.extend(tail_part)
        return clip_to_bytes(out, max_bytes)

    def entry(self, index: int) -> LogEntry | None:
        got = self.entries(index, index)
        return got[0] if got else None

    def first_index_of_term(self, term: int, upto: int) -> int:
        """The first index at or below `upto` whose entry has `term`, given that `upto` has it.
        Terms never decrease along a log, so this is a binary search (a few reads)."""
        lo, hi = max(self.first_index, 1), upto  # invariant: term_at(hi) == term
        while lo < hi:
            mid = (lo + hi) // 2
            if self.term_at(mid) < term:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def last_index_of_term(self, term: int, upto: int) -> int | None:
        """The last index at or below `upto` whose entry has `term`; None if there is none
        (or it was compacted away). A binary search, as terms never decrease along a log."""
        lo, hi = max(self.first_index, 1), min(upto, self.last_index)
        found = None
        while lo <= hi:  # the last index whose term is <= `term`
            mid = (lo + hi) // 2
            if self.term_at(mid) <= term:
                found, lo = mid, mid + 1
            else:
                hi = mid - 1
        return found if found is not None and self.term_at(found) == term else None

    # -- writes: the LogManager's thread (the end of the log: the leading Node's) -------------

    def append_unstable(self, entries: Sequence[LogEntry]) -> None:
        """Make `entries` readable at once (before they are durable). They must continue the log."""
        if not entries:
            return
        with self._tail_lock:
            self._tail.extend(entries)
            self.last_index = entries[-1].index
            self.last_term = entries[-1].term
        self._track_configurations(entries)

    def _track_configurations(self, entries: Sequence[LogEntry]) -> None:
        """Record the configuration entries among `entries`, and publish the newest. (The
        LogManager checks that a leader's configuration entries decode before appending.)"""
        for entry in entries:
            if entry.type == EntryType.CONFIGURATION:
                with self._conf_lock:
                    self._confs.add(entry.index, _decode_conf(entry.data, entry.index))
                    self.conf_state = self._confs.state()

    def persist(self, entries: Sequence[LogEntry]) -> None:
        """Write `entries` (already in the tail) to storage; one fsync for the batch."""
        if not entries:
            return
        with self._storage_lock:
            self._storage.append_entries(entries)
        self.stable_index = entries[-1].index
        self._trim_tail()

    def truncate_suffix(self, last_index_kept: int) -> None:
        """Drop entries after `last_index_kept`, from the tail and from storage."""
        with self._storage_lock:
            if last_index_kept < self._storage.last_log_index():
                self._storage.truncate_suffix(last_index_kept)
        with self._tail_lock:
            keep = max(0, last_index_kept - self._tail_first + 1)
            del self._tail[keep:]
            if not self._tail:
                self._tail_first = last_index_kept + 1
            self.last_index = last_index_kept
            self.stable_index = min(self.stable_index, last_index_kept)
        self.last_term = self.term_at(last_index_kept)
        with self._conf_lock:
            self._confs.truncate_suffix(last_index_kept)
            self.conf_state = self._confs.state()

    def compact(self, snapshot: SnapshotMeta, first_index_kept: int) -> None:
        """A local snapshot is durable: record it, and drop the entries before
        `first_index_kept` (<= snapshot.last_index + 1 and <= stable_index: only durable,
        snapshotted entries go)."""
        assert first_index_kept <= min(snapshot.last_index + 1, self.stable_index), (
            first_index_kept,
            snapshot,
            self.stable_index,
        )
        self._set_snapshot(snapshot)
        if first_index_kept > self.first_index:
            with self._storage_lock:
                self._storage.truncate_prefix(first_index_kept)
            self.first_index = first_index_kept

    def install(self, snapshot: SnapshotMeta) -> None:
        """A follower installed the leader's snapshot. If this log holds the snapshot's last
        entry, the entries after it are kept (Raft Fig. 13, step 6); otherwise the whole log
        is discarded and the next append is snapshot.last_index + 1."""
        index = snapshot.last_index
        if self.known_term(index) == snapshot.last_term and index >= self.first_index:
            self._set_snapshot(snapshot)
            self.set_committed(index)
            return
        with self._conf_lock:
            self._confs.truncate_suffix(index)  # the whole log goes; the snapshot's conf rules
        with self._storage_lock:
            self._storage.reset(index + 1)
        with self._tail_lock:
            self._tail.clear()
            self._tail_first = index + 1
            self._set_snapshot(snapshot)
            self.first_index = index + 1
            self.last_index = self.stable_index = index
            self.last_term = snapshot.last_term
        self.set_committed(index)

    def _set_snapshot(self, snapshot: SnapshotMeta) -> None:
        # The term first: a reader seeing the new index must find its term.
        self.snapshot_term = snapshot.last_term
        self.snapshot_index = snapshot.last_index
        base = _decode_conf(snapshot.conf, snapshot.last_index)
        with self._conf_lock:
            self._confs.set_base(snapshot.last_index, base)
            self.conf_state = self._confs.state()

    def set_committed(self, index: int) -> None:
        if index > self.committed_index:
            self.committed_index = index
            self._trim_tail()

    def close(self) -> None:
        with self._storage_lock:
            self._storage.close()

    def _trim_tail(self) -> None:
        # Keep every non-durable entry, and at most `_tail_cap` durable ones beyond what is
        # committed so recent reads stay in memory.
        with self._tail_lock:
            drop_through = min(self.stable_index, self.committed_index) - self._tail_cap
            if drop_through >= self._tail_first:
                del self._tail[: drop_through - self._tail_first + 1]
                self._tail_first = drop_through + 1


def _decode_conf(data: bytes, index: int) -> Configuration:
    try:
        return Configuration.decode(data)
    except ValueError as exc:
        raise CorruptLogError(f"the configuration at {index} does not decode: {exc}") from None


def reconcile_with_snapshot(storage: LogStorage, snapshot: SnapshotMeta | None) -> None:
    """At start: make the log continue the newest snapshot. The snapshot is the truth for every
    index it covers (only committed entries are ever snapshotted), so a log that does not hold
    its last entry with its term (a crash between installing a snapshot and resetting the log,
    or a log left behind by the snapshot) is reset to start right after it. A log that starts
    after the snapshot's next index, or after 1 with no snapshot at all, has lost committed
    entries: CorruptLogError, rather than run with a hole."""
    first, last = storage.first_log_index(), storage.last_log_index()
    if snapshot is None:
        if first > 1:
            raise CorruptLogError(
                f"the log starts at {first} but there is no snapshot of the entries before it"
            )
        return
    index = snapshot.last_index
    if first > index + 1:
        raise CorruptLogError(
            f"the log starts at {first}, after the newest snapshot ({index}) + 1: entries lost"
        )
    if first == index + 1:
        return  # the log starts right after the snapshot (empty or not)
    if last >= index and storage.get_term(index) == snapshot.last_term:
        return  # the log holds the snapshot's last entry: it continues it
    log.info("log %d..%d does not continue snapshot %d; resetting it", first, last, index)
    storage.reset(index + 1)
