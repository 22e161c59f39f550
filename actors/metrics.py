"""Hot-path metrics: counters and fixed-bucket histograms the actors update as they work.

The Raft core cannot import prometheus_client (it is the embeddable library), so these are
plain objects; `actors/service/http_status.py` turns them into Prometheus families when
scraped. One `RaftMetrics` per peer, made by the wiring and handed to every actor
(`RaftNode.metrics`); the service registers its own families in the same object.

    fsync = metrics.fsync_seconds.cell()          # at construction: this writer's own cell
    fsync.observe(seconds)                        # on the hot path: a bisect and two adds
    outcomes = metrics.proposals.cells("appended", "overloaded")
    outcomes["appended"].inc(len(commands))       # an int increment

Threads. A family (one metric name) is made of series (one set of label values), and a series
of cells. Invariant: a cell has one writer, the thread of the actor that took it (or writers
serialised by one lock: the KV server's, whose answers are settled on several threads). That
is why a writer takes cells of its own instead of sharing one: the Node and the LogManager
both refuse proposals, and every Replicator (one thread per follower) sends AppendEntries.
Writes take no lock; they are plain int and float updates. The family's lock guards only its
list of cells (taking one, retiring one) and the scrape, which sums a series' cells. Scrapes
read from another thread (the HTTP server's) under the GIL, so a read is never torn within a
value; a histogram's bucket counts are copied at once (one list copy), so its count always
agrees with its buckets, but its sum may be one observation ahead or behind them: acceptable
for monitoring.

A writer that goes away for good (a Replicator at the end of its term) retires its cells:
their counts are folded into the series, so the number of cells stays bounded by the live
writers while every count ever made is kept.

Durations are measured with `Metrics.clock` (time.perf_counter; a test injects its own), a
pair of reads per batch (an fsync, an on_apply call), never per entry.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Labels = tuple[str, ...]

# Upper bounds of the buckets (Prometheus `le`); every histogram also has +Inf.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ENTRIES_BUCKETS = tuple(float(1 << n) for n in range(11))  # 1 .. 1024: max_entries_per_request
BYTES_BUCKETS = tuple(float(1 << n) for n in range(6, 23, 2))  # 64 B .. 4 MiB


class _Cell:
    """One writer's part of the series `labels` of a family."""

    __slots__ = ("_family", "labels")

    def __init__(self, family: _Family[Any], labels: Labels) -> None:
        self._family = family
        self.labels = labels

    def retire(self) -> None:
        """The writer is done for good: fold this cell into its series."""
        self._family.retire(self)


class CounterCell(_Cell):
    """Only its writer calls `inc`."""

    __slots__ = ("value",)

    def __init__(self, family: Counter, labels: Labels) -> None:
        super().__init__(family, labels)
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class HistogramCell(_Cell):
    """Per-bucket counts (not cumulative; the last one is +Inf) and the sum of the
    observations. Only its writer calls `observe`."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, family: Histogram, labels: Labels) -> None:
        super().__init__(family, labels)
        self.bounds = family.bounds
        self.counts = [0] * (len(family.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le, "less or equal").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


@dataclass(frozen=True, slots=True)
class CounterSample:
    labels: Labels
    value: int


@dataclass(frozen=True, slots=True)
class HistogramSample:
    labels: Labels
    buckets: tuple[int, ...]  # cumulative counts, one per bound, then +Inf (== count)
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1]


C = TypeVar("C", CounterCell, HistogramCell)


class _Family(Generic[C]):
    """A metric name with its label names, and its series' cells (see the module docstring)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labels: Labels = tuple(labels)
        self._lock = threading.Lock()  # guards _live and _retired; never taken by a write
        self._live: dict[Labels, list[C]] = {}
        self._retired: dict[Labels, C] = {}  # per series: what retired cells had counted

    def _new_cell(self, labels: Labels) -> C:
        raise NotImplementedError

    def _fold(self, into: C, cell: C) -> None:
        raise NotImplementedError

    def cell(self, *values: str) -> C:
        """A new cell of the series `values` (one per label name), for the caller only."""
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, not {values}")
        cell = self._new_cell(values)
        with self._lock:
            self._live.setdefault(values, []).append(cell)
        return cell

    def cells(self, *keys: str | Labels) -> dict[str | Labels, C]:
        """One new cell per key: a label value (one-label families) or a tuple of them."""
        return {key: self.cell(*((key,) if isinstance(key, str) else key)) for key in keys}

    def retire(self, cell: C) -> None:
        with self._lock:
            live = self._live.get(cell.labels, [])
            if not any(c is cell for c in live):
                return  # retired already
            live[:] = [c for c in live if c is not cell]
            total = self._retired.get(cell.labels)
            if total is None:
                total = self._retired[cell.labels] = self._new_cell(cell.labels)
            self._fold(total, cell)

    def _merged(self) -> list[C]:
        """Each series' cells (live and retired) summed into one new cell, by labels."""
        with self._lock:
            merged: list[C] = []
            for key in sorted(self._live.keys() | self._retired.keys()):
                total = self._new_cell(key)
                cells: list[C] = list(self._live.get(key, []))
                if key in self._retired:
                    cells.append(self._retired[key])
                for cell in cells:
                    self._fold(total, cell)
                merged.append(total)
            return merged


class Counter(_Family[CounterCell]):
    """A count that only grows (Prometheus adds `_total` to the name)."""

    def _new_cell(self, labels: Labels) -> CounterCell:
        return CounterCell(self, labels)

    def _fold(self, into: CounterCell, cell: CounterCell) -> None:
        into.value += cell.value

    def samples(self) -> list[CounterSample]:
        return [CounterSample(c.labels, c.value) for c in self._merged()]

    def value(self, *labels: str) -> int:
        """The count of the series `labels` (0 if no writer has a cell of it)."""
        return next((s.value for s in self.samples() if s.labels == labels), 0)


class Histogram(_Family[HistogramCell]):
    """Observations counted into fixed buckets, with their sum."""

    def __init__(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must be increasing, got {buckets}")
        super().__init__(name, doc, labels)
        self.bounds = bounds

    def _new_cell(self, labels: Labels) -> HistogramCell:
        return HistogramCell(self, labels)

    def _fold(self, into: HistogramCell, cell: HistogramCell) -> None:
        counts = list(cell.counts)  # one copy: the buckets agree with each other
        into.counts = [a + b for a, b in zip(into.counts, counts, strict=True)]
        into.sum += cell.sum

    def samples(self) -> list[HistogramSample]:
        out = []
        for cell in self._merged():
            cumulative, running = [], 0
            for count in cell.counts:
                running += count
                cumulative.append(running)
            out.append(HistogramSample(cell.labels, tuple(cumulative), cell.sum))
        return out

    def sample(self, *labels: str) -> HistogramSample:
        """The series `labels` (all zero if no writer has a cell of it)."""
        empty = HistogramSample(labels, (0,) * (len(self.bounds) + 1), 0.0)
        return next((s for s in self.samples() if s.labels == labels), empty)


F = TypeVar("F", Counter, Histogram)


class Metrics:
    """A registry of families by name. Registering a name again with the same kind and labels
    returns the family already there (so a restarted service finds its counts)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock  # what durations are measured with
        self._lock = threading.Lock()
        self._families: dict[str, Counter | Histogram] = {}

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, doc, labels))

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        return self._register(Histogram(name, doc, buckets, labels))

    def _register(self, family: F) -> F:
        with self._lock:
            existing = self._families.setdefault(family.name, family)
        if existing is family:
            return family
        same = type(existing) is type(family) and existing.labels == family.labels
        if isinstance(existing, Histogram) and isinstance(family, Histogram):
            same = same and existing.bounds == family.bounds
        if not same:
            raise ValueError(f"metric {family.name} is registered already, differently")
        assert isinstance(existing, type(family))
        return existing

    def families(self) -> list[Counter | Histogram]:
        with self._lock:
            return list(self._families.values())


class RaftMetrics(Metrics):
    """The families the Raft core's actors write (who writes which is said in each actor)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(clock)
        self.proposals = self.counter(
            "proposals",
            "Commands proposed to this peer, by whether they entered the log: appended, or "
            "refused (not_leader, overloaded, too_large, stopped, failed)",
            ["outcome"],
        )
        self.proposals_completed = self.counter(
            "proposals_completed",
            "Appended commands by how their future ended: applied, leadership_lost, stopped, "
            "failed (the last three: outcome unknown)",
            ["outcome"],
        )
        self.apply_seconds = self.histogram(
            "apply_seconds", "Time of one state machine on_apply batch", LATENCY_BUCKETS
        )
        self.fsync_seconds = self.histogram(
            "fsync_seconds",
            "Time of one group commit: the log append and its fsync",
            LATENCY_BUCKETS,
        )
        self.append_entries_entries = self.histogram(
            "append_entries_batch_entries",
            "Entries per AppendEntries sent (heartbeats and probes, which carry none, are not "
            "counted)",
            ENTRIES_BUCKETS,
        )
        self.append_entries_bytes = self.histogram(
            "append_entries_batch_bytes",
            "Command bytes per AppendEntries sent with entries",
            BYTES_BUCKETS,
        )
        self.pre_votes = self.counter(
            "pre_votes", "Pre-votes this peer ran, by outcome: started, won, lost", ["outcome"]
        )
        self.elections = self.counter(
            "elections", "Elections this peer ran, by outcome: started, won, lost", ["outcome"]
        )
        self.leader_changes = self.counter(
            "leader_changes", "Terms in which this peer came to know a leader (itself or another)"
        )
        self.callback_errors = self.counter(
            "callback_errors",
            "State machine callbacks that raised without harm to the state (on_read, the "
            "events), by callback; on_apply raising puts the peer in ERROR instead",
            ["callback"],
        )
        self.snapshots = self.counter(
            "snapshots",
            "Snapshots saved (from this peer's state), installed (from a leader) and loaded "
            "(into the state machine), by outcome: ok, failed",
            ["operation", "outcome"],
        )
        self.snapshot_seconds = self.histogram(
            "snapshot_seconds",
            "Time of a snapshot that succeeded: save (capture to durable), install (first "
            "chunk to loaded), load",
            SNAPSHOT_BUCKETS,
            ["operation"],
        )
