"""ReadOnly: the leader's linearizable reads without the log (Raft dissertation §6.4; etcd's
`read_only.go`, SOFAJRaft's ReadOnlyService). A pure object: the Node feeds it events and acts
on the decisions it returns.

ReadIndex (`ReadOnlySafe`, the default):
1. A read that arrives gets the read index max(commit index, the first index of the leader's
   term). The second term is the new-leader rule: until an entry of its own term is committed,
   a leader does not know the commit index of earlier terms, so it serves nothing earlier than
   its term's first entry - waiting until that is applied is waiting for it to commit.
2. Leadership is confirmed by a heartbeat round: every follower is asked to send an
   AppendEntries now, and a follower acknowledges the round once it has answered (in this term)
   a request sent after the round began. With a quorum of acknowledgements (the leader counts
   itself), no other leader can have been elected before the round began, so the read index is
   at least every index committed when the read arrived.
3. The caller then waits until the state machine has applied the read index and reads.

Batching: reads that arrive while a round is under way wait for the next round, which starts
as soon as the current one ends; so there is at most one round in flight, and any number of
reads share it. A round without a quorum within `round_timeout` fails its reads (retryable: a
read changes nothing), as does the end of leadership.

Leases (`ReadOnlyLeaseBased`, opt-in): a follower that answered a request sent at time s
refuses votes until s + election_timeout by its own clock (check-quorum plus the vote rule in
node.py), so no other leader can exist before the quorum-th latest such s plus the election
timeout. The lease ends `lease_timeout` (election_timeout x leader_lease_ratio, 0.9 by
default) after it: the rest is the margin for clocks that run at different rates. The clock is
monotonic; what the lease assumes is that no peer's clock runs more than that margin (10 %)
slower or faster than the leader's over one election timeout. Without a lease, a read falls
back to ReadIndex. A leadership transfer revokes the lease for the rest of the term: the
target's votes are granted without regard to it (node.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.configuration import Configuration

# RaftNode.read's consistency levels (the KV protocol uses the same names on the wire).
LINEARIZABLE, LEASE, SERIALIZABLE = "linearizable", "lease", "serializable"
CONSISTENCIES = (LINEARIZABLE, LEASE, SERIALIZABLE)


@dataclass
class Round:
    """One heartbeat round: its id, its reads and who acknowledged it."""

    number: int
    reads: list[tuple[int, Any]]  # (commit index on arrival, waiter)
    acks: set[str] = field(default_factory=set)


class ReadOnly:
    """A leader's read rounds, for one term (the Node makes a new one per term)."""

    def __init__(self, peer_id: str, conf: Callable[[], Configuration]) -> None:
        self.peer_id = peer_id
        self._conf = conf  # the configuration in force now: it may change within a term
        # The first index of this leader's term, once the LogManager has said (0: not yet;
        # no read is served before).
        self.term_first_index = 0
        self.round: Round | None = None  # the round in flight
        self.waiting: list[tuple[int, Any]] = []  # (commit index on arrival, waiter)
        self._numbers = 0
        # peer -> send time of the newest request it answered in this term (for the lease)
        self.acked_sent_at: dict[str, float] = {}
        # Set once this leader sent TimeoutNow: voters then grant the target's votes however
        # recently they heard from us, so no lease of this term can be trusted any more.
        self.lease_revoked = False

    @property
    def ready(self) -> bool:
        return self.term_first_index > 0

    def read_index(self, committed_index: int) -> int:
        assert self.ready
        return max(committed_index, self.term_first_index)

    def _indexed(self, reads: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        return [(self.read_index(committed), waiter) for committed, waiter in reads]

    # -- ReadIndex ---------------------------------------------------------------------------

    def add(self, committed_index: int, waiter: Any) -> None:
        """A read arrived: it waits for the next round."""
        self.waiting.append((committed_index, waiter))

    def start_round(self) -> Round | None:
        """The round to send now, if reads wait, none is in flight and the term has begun."""
        if self.round is not None or not self.waiting or not self.ready:
            return None
        self._numbers += 1
        self.round, self.waiting = Round(self._numbers, self.waiting), []
        return self.round

    def acknowledge(self, peer: str, number: int) -> list[tuple[int, Any]] | None:
        """`peer` acknowledged round `number`. Returns the round's reads, each with its read
        index, once a quorum has (and ends the round); None otherwise."""
        current = self.round
        if current is None or current.number != number or peer not in self._conf().all_peers():
            return None
        current.acks.add(peer)
        return self._maybe_confirmed()

    def _maybe_confirmed(self) -> list[tuple[int, Any]] | None:
        current = self.round
        if current is None or not self._conf().has_quorum(current.acks | {self.peer_id}):
            return None
        self.round = None
        return self._indexed(current.reads)

    def confirmed_alone(self) -> list[tuple[int, Any]] | None:
        """The round just started, if the leader is a quorum by itself (a cluster of one)."""
        return self._maybe_confirmed()

    def expire(self, number: int) -> list[Any]:
        """Round `number` took too long: its reads fail (and the round ends)."""
        if self.round is None or self.round.number != number:
            return []
        reads, self.round = self.round.reads, None
        return [waiter for _, waiter in reads]

    def drain(self) -> list[Any]:
        """Leadership ended: every read still here fails."""
        reads = self.waiting + (self.round.reads if self.round is not None else [])
        self.waiting, self.round = [], None
        return [waiter for _, waiter in reads]

    # -- leases ------------------------------------------------------------------------------

    def acked(self, peer: str, sent_at: float) -> None:
        """`peer` answered, in this term, a request sent at `sent_at`."""
        if sent_at > self.acked_sent_at.get(peer, -float("inf")):
            self.acked_sent_at[peer] = sent_at

    def lease_start(self, now: float) -> float:
        """The quorum-th latest send time a follower acknowledged (the leader's own: now); no
        other leader can be elected before it plus the election timeout."""
        times = {p: self.acked_sent_at.get(p, -float("inf")) for p in self._conf().all_peers()}
        times[self.peer_id] = now
        ordered = sorted(times.items(), key=lambda item: item[1], reverse=True)
        chosen: set[str] = set()
        for peer, at in ordered:
            chosen.add(peer)
            if self._conf().has_quorum(chosen):
                return at
        return -float("inf")

    def lease_valid(self, now: float, lease_timeout: float) -> bool:
        if self.lease_revoked:
            return False
        return self.ready and now < self.lease_start(now) + lease_timeout


class FollowerReads:
    """A follower's linearizable reads: it asks the leader for a read index (ReadIndexRequest)
    for all the reads waiting, one request at a time, and each read then waits until the
    follower has applied that index. Reads that arrive while a request is out share the next
    one. Pure: the Node sends, times and answers."""

    def __init__(self) -> None:
        self.waiting: list[Any] = []
        self.outstanding: tuple[int, list[Any]] | None = None  # (request id, its reads)
        self._ids = 0

    def add(self, waiter: Any) -> None:
        self.waiting.append(waiter)

    def start(self) -> int | None:
        """The id of a request to send now for the waiting reads, if none is out."""
        if self.outstanding is not None or not self.waiting:
            return None
        self._ids += 1
        self.outstanding, self.waiting = (self._ids, self.waiting), []
        return self._ids

    def answered(self, request_id: int) -> list[Any]:
        """The reads of request `request_id` (answered or timed out); [] for a stale id."""
        if self.outstanding is None or self.outstanding[0] != request_id:
            return []
        reads, self.outstanding = self.outstanding[1], None
        return reads

    def drain(self) -> list[Any]:
        reads = self.waiting + (self.outstanding[1] if self.outstanding is not None else [])
        self.waiting, self.outstanding = [], None
        return reads
