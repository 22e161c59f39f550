"""Progress: what a leader knows about one follower's log, and the rules that move it (etcd's
`tracker/progress.go` and `tracker/inflights.go`, in SOFAJRaft's Replicator vocabulary).

- `next_index`, `match_index` (Raft Fig. 2) and the state: PROBE (find where the logs agree,
  one empty request at a time), REPLICATE (a pipeline of requests, `next_index` advanced
  optimistically as they are sent) or SNAPSHOT (the entries the follower needs were compacted
  away: the leader's snapshot is being sent; nothing else is).
- The in-flight window: what each request sent covered, oldest first, and the responses that
  arrived before their turn (held, by seq) so that responses are applied in the order sent.
- The back-off on a refusal or a short success (Raft §5.3), with its two guards: a refusal
  overtaken by a later success never sends the leader below `match_index`, and a refused probe
  at exactly `match_index` means the follower lost entries it had acknowledged.

Plain data and decisions: no actor, clock, transport or logging. The Replicator calls these
methods and does the sending, the telling and the logging from what they return. Every rule is
table-tested in tests/unit/actors/test_progress.py.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")  # a held response; the Progress never looks inside it


class ReplicatorState(enum.Enum):
    PROBE = "PROBE"
    REPLICATE = "REPLICATE"
    SNAPSHOT = "SNAPSHOT"


@dataclass(frozen=True, slots=True)
class Inflight:
    """What an AppendEntries in flight covered: entries prev_log_index+1 .. +count."""

    seq: int
    prev_log_index: int
    count: int
    sent_at: float

    @property
    def last_index(self) -> int:
        """The last index a success for this request acknowledges."""
        return self.prev_log_index + self.count

    def acknowledged_by(self, success: bool, last_log_index: int) -> bool:
        """Whether a response acknowledges every entry this request covered (a success whose
        follower log reaches at least as far)."""
        return success and last_log_index >= self.last_index


class Placement(enum.Enum):
    """Where a response's seq stands against the requests in flight."""

    STALE = "stale"  # not in flight: its request belongs to a pipeline that was reset
    IN_ORDER = "in order"  # the oldest in flight: handle it now
    EARLY = "early"  # in flight behind older ones: hold it until its turn


class BackOff(enum.Enum):
    """Which rule chose the next_index after a request was not acknowledged."""

    STEP = "step"  # refused, the follower's log reaches prev_log_index: step back one (§5.3)
    JUMP = "jump"  # refused, the follower's log is shorter: jump back to its end (§5.3)
    SKIP_TERM = "skip term"  # refused with a conflict hint: skip the follower's whole term
    SHORT = "short"  # a success that does not cover what was sent: resume after its end
    OVERTAKEN = "overtaken"  # would go to or below match_index: resume after match_index
    LOST_ACKED = "lost acknowledged"  # a probe at exactly match_index refused: repair from end


@dataclass(frozen=True, slots=True)
class BackOffDecision:
    rule: BackOff
    next_index: int  # before `become_probe` raises it to the first index


class Progress(Generic[R]):
    """The replication progress of one follower, for one leader term; see the module docstring."""

    def __init__(self, next_index: int) -> None:
        self.state = ReplicatorState.PROBE
        # Invariant: 1 <= next_index, and match_index < next_index unless a follower lost
        # entries it had acknowledged (BackOff.LOST_ACKED). match_index only grows. Whether
        # next_index is still in the leader's log (or compacted away: SNAPSHOT) is the
        # Replicator's to check, against the LogView, when it sends.
        self.next_index = max(next_index, 1)
        self.match_index = 0
        # Requests in flight, oldest first. Invariant: their seqs are consecutive (every send
        # appends the next seq; a reset clears it), and in PROBE there is at most one.
        self.inflight: deque[Inflight] = deque()
        # Responses that arrived before their turn, by seq. Invariant: keys are in flight.
        self.held: dict[int, R] = {}

    def __str__(self) -> str:
        return (
            f"{self.state.value} next={self.next_index} match={self.match_index} "
            f"inflight={len(self.inflight)}"
        )

    # -- state changes -----------------------------------------------------------------------

    def become_probe(self, next_index: int | None = None) -> None:
        """Back to PROBE; every request in flight (and every held response) is forgotten, so
        their responses become stale. Without `next_index`, resume at the oldest unacked one."""
        if next_index is None:
            next_index = self.inflight[0].prev_log_index + 1 if self.inflight else self.next_index
        self.clear_inflight()
        self.state = ReplicatorState.PROBE
        self.next_index = max(next_index, 1)

    def become_replicate(self) -> None:
        """A probe matched (next_index - 1 is where the logs agree): pipeline from here on."""
        self.state = ReplicatorState.REPLICATE

    def become_snapshot(self) -> None:
        """What the follower needs was compacted away: send the snapshot, nothing else."""
        self.clear_inflight()
        self.state = ReplicatorState.SNAPSHOT

    def snapshot_installed(self, last_index: int) -> bool:
        """The follower installed a snapshot through `last_index`: it holds every entry up to
        there, so probe right after it. Returns whether match_index grew."""
        grew = last_index > self.match_index
        self.match_index = max(self.match_index, last_index)
        self.become_probe(self.match_index + 1)
        return grew

    def clear_inflight(self) -> None:
        """Forget every request in flight and every held response; state and indexes stay."""
        self.inflight.clear()
        self.held.clear()

    # -- sending -----------------------------------------------------------------------------

    def can_send(self, max_inflight: int) -> bool:
        """Whether the pipeline takes another request with entries: REPLICATE, window not full."""
        return self.state is ReplicatorState.REPLICATE and len(self.inflight) < max_inflight

    def sent(self, seq: int, count: int, now: float) -> Inflight:
        """Track a request sent at next_index (`count` entries from there; none for a probe or a
        heartbeat), and advance next_index past them optimistically."""
        assert not self.inflight or seq == self.inflight[-1].seq + 1, "seqs are consecutive"
        assert self.state is ReplicatorState.REPLICATE or (count == 0 and not self.inflight)
        request = Inflight(seq, self.next_index - 1, count, now)
        self.inflight.append(request)
        self.next_index += count
        return request

    def overdue(self, now: float, timeout: float) -> Inflight | None:
        """The oldest request in flight if it has waited `timeout` or longer, else None."""
        oldest = self.inflight[0] if self.inflight else None
        return oldest if oldest and now - oldest.sent_at >= timeout else None

    # -- responses, in the order the requests were sent ---------------------------------------

    def sent_at(self, seq: int) -> float | None:
        """When request `seq` was sent, if it is in flight (seqs in flight are consecutive)."""
        if not self.inflight or not (self.inflight[0].seq <= seq <= self.inflight[-1].seq):
            return None
        return self.inflight[seq - self.inflight[0].seq].sent_at

    def place(self, seq: int) -> Placement:
        """Where the response to `seq` stands (seqs in flight are consecutive)."""
        if not self.inflight or not (self.inflight[0].seq <= seq <= self.inflight[-1].seq):
            return Placement.STALE
        return Placement.IN_ORDER if seq == self.inflight[0].seq else Placement.EARLY

    def hold(self, seq: int, response: R) -> None:
        """Keep an EARLY response until every earlier one is handled."""
        assert self.place(seq) is Placement.EARLY
        self.held[seq] = response

    def pop_oldest(self) -> Inflight:
        """The oldest request in flight, now answered (its response was IN_ORDER)."""
        return self.inflight.popleft()

    def pop_held(self) -> R | None:
        """The held response whose turn has come (that of the oldest in flight), if any."""
        return self.held.pop(self.inflight[0].seq, None) if self.inflight else None

    def maybe_update(self, acked_index: int) -> bool:
        """A follower holds every entry up to `acked_index`: returns whether match_index grew."""
        assert acked_index < self.next_index, "only what was sent is acknowledged"
        if acked_index <= self.match_index:
            return False
        self.match_index = acked_index
        return True

    def back_off(
        self, sent: Inflight, success: bool, last_log_index: int, hint: int | None = None
    ) -> BackOffDecision:
        """Where to probe next after `sent` was answered without acknowledging it all (a refusal,
        or a success whose follower log `last_log_index` is shorter than what was sent).
        `hint`: for a refusal that named the conflicting term, the index just past what the
        leader and the follower may share (see Replicator._skip_conflicting_term)."""
        assert not sent.acknowledged_by(success, last_log_index)
        if success:
            # The follower's log does not match what was sent: trust nothing beyond its end.
            decision = BackOffDecision(BackOff.SHORT, last_log_index + 1)
        elif hint is not None and last_log_index >= sent.prev_log_index:
            # Never forward of the refused point: the logs disagree at prev_log_index.
            decision = BackOffDecision(BackOff.SKIP_TERM, max(1, min(hint, sent.prev_log_index)))
        elif last_log_index < sent.prev_log_index:
            decision = BackOffDecision(BackOff.JUMP, last_log_index + 1)
        else:
            decision = BackOffDecision(BackOff.STEP, sent.prev_log_index)
        if decision.next_index > self.match_index:
            return decision
        if sent.count == 0 and sent.prev_log_index == self.match_index:
            # A probe at the very point the follower acknowledged failed: it lost entries it had
            # made durable (a broken disk). Repair it from where it really is.
            return BackOffDecision(BackOff.LOST_ACKED, decision.next_index)
        # A refusal overtaken by a later success (requests reordered on the way): the follower
        # durably holds everything up to match_index, so never go below it.
        return BackOffDecision(BackOff.OVERTAKEN, self.match_index + 1)
