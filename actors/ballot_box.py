"""BallotBox: counts a leader's replicas and decides the commit index.

SOFAJRaft keeps one ballot per pending index (a queue of `Ballot`s from `pendingIndex` on) and
commits the granted prefix of that queue. Here the same decision has a compact form: the match
index of every peer. A peer's `Grant(last_index)` means it durably holds *every* entry up to
`last_index` of this leader's log (the log matching / prefix property, Raft §5.3), so it has
voted in every ballot `pending_index..last_index` at once. The highest index a quorum holds,
`conf.quorum_match(match)`, is then exactly the end of the contiguous granted prefix of ballots,
and committing it commits every index below it. With a joint configuration `quorum_match` takes
the minimum over the old and the new majorities, so each ballot needs both quorums (§4.3).

Raft paper Fig. 8: entries of earlier terms are never committed by counting replicas; they
commit only through an entry of the current term. `pending_index` is the index of the leader's
first entry of its term, so nothing commits before a quorum holds it, and then everything before
it commits too.

Runs on its own pykka thread (or on a test's thread through ActorHarness); every method is called
by the actor's dispatch, one message at a time.
"""

from __future__ import annotations

import logging

from actors import trace
from actors.base import RaftActor, handles
from actors.configuration import Configuration
from actors.mailbox import Mailbox
from actors.messages import (
    ClearPending,
    Commit,
    Committed,
    Grant,
    ResetPending,
    SetConfiguration,
)

log = logging.getLogger(__name__)

_NO_CONF = Configuration(frozenset())


class BallotBox(RaftActor):
    """Decides the commit index of a leader; tells the FSMCaller and the LogManager about it."""

    def __init__(self, fsm_caller: Mailbox, log_manager: Mailbox, node: Mailbox) -> None:
        super().__init__(supervisor=node)
        self.fsm_caller = fsm_caller
        self.log_manager = log_manager
        # The leader term being counted; never decreases.
        self.term = 0
        # The first index of the current leader term; 0 = not leading (nothing is counted).
        # Invariant: pending_index == 0 or pending_index > last_committed_index at the time of
        # ResetPending (a new leader's first entry follows everything it had).
        self.pending_index = 0
        self.conf: Configuration = _NO_CONF
        # Highest index each replicated peer is known to hold in this term (missing = 0); only
        # the voters of `conf` count (quorum_match), but a learner's or a catching-up peer's
        # grants are kept so it counts at once when a configuration makes it a voter.
        # Invariant: each value only grows within a term.
        self.match: dict[str, int] = {}
        # Invariant: never decreases (commit is forever, across terms too).
        self.last_committed_index = 0

    def __str__(self) -> str:
        if not self.pending_index:
            return f"IDLE term={self.term} committed={self.last_committed_index}"
        matches = ",".join(f"{peer}:{index}" for peer, index in sorted(self.match.items()))
        return (
            f"LEADING term={self.term} pending={self.pending_index} "
            f"committed={self.last_committed_index} match={matches}"
        )

    @property
    def is_leading(self) -> bool:
        return self.pending_index > 0

    # -- messages ----------------------------------------------------------------------------

    @handles(ResetPending)
    def on_reset_pending(self, msg: ResetPending) -> None:
        """Start counting for a new leader term: every ballot from `pending_index` on is open,
        and no peer has granted anything yet."""
        if msg.term < self.term:
            log.debug("ballot box: stale %s (term %d)", msg, self.term)
            return
        if msg.pending_index <= self.last_committed_index:
            # Would let a new term "commit" what is already committed; harmless, but a sign of
            # a confused caller.
            log.warning(
                "ballot box: pending index %d <= committed %d",
                msg.pending_index,
                self.last_committed_index,
            )
        self.term = msg.term
        self.pending_index = msg.pending_index
        self.conf = msg.conf
        self.match = {}

    @handles(Grant)
    def on_grant(self, msg: Grant) -> None:
        """`peer_id` holds everything up to `last_index`: record it and maybe commit."""
        if not self.is_leading:
            return
        if msg.term != self.term:
            # A replicator of an earlier leader term: its indexes may name other entries now.
            log.debug("ballot box: %s is not of term %d; ignored", msg, self.term)
            return
        if msg.last_index <= self.match.get(msg.peer_id, 0):
            return  # old news: match only grows
        self.match[msg.peer_id] = msg.last_index
        self.maybe_commit()

    @handles(ClearPending)
    def on_clear_pending(self, msg: ClearPending) -> None:
        """Leadership of `term` ended: stop counting (a later term's ResetPending restarts)."""
        if msg.term < self.term:
            return
        self.term = msg.term
        self.pending_index = 0
        self.conf = _NO_CONF
        self.match = {}

    def enter_error(self, reason: str) -> None:
        """The peer is in ERROR: commit nothing more."""
        self.pending_index = 0
        self.conf = _NO_CONF
        self.match = {}

    @handles(SetConfiguration)
    def on_set_configuration(self, msg: SetConfiguration) -> None:
        """A configuration entry was appended in this leader term: count by it from now on,
        for every open ballot (stricter while joint; a smaller C_new may commit at once)."""
        if not self.is_leading or msg.term != self.term:
            return
        self.conf = msg.conf
        self.maybe_commit()

    # -- decisions ---------------------------------------------------------------------------

    def maybe_commit(self) -> bool:
        """Advance the commit index to what a quorum holds, if that is at least the first entry
        of this term (Fig. 8). Returns whether it advanced."""
        candidate = self.conf.quorum_match(self.match)
        if candidate < self.pending_index or candidate <= self.last_committed_index:
            return False
        self.last_committed_index = candidate
        if trace.ON:
            trace.mark("leader.commit")
        self.fsm_caller.tell(Commit(candidate))
        self.log_manager.tell(Committed(candidate))
        return True
