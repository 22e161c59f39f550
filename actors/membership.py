"""Membership changes (Raft dissertation §4.3; SOFAJRaft's ConfigurationCtx): what is asked for,
and the state a leader keeps while it carries a change out. Pure; the Node acts.

Stages of one change, one at a time per leader:

1. CATCHING_UP: peers that are to become voters and are not replicated to yet get a Replicator
   (as learners would: never counted). Once every one of them holds the leader's log up to
   `catchup_margin` entries, the change moves on. A peer that makes no progress (no answer, or
   no higher match index) for an election timeout (for its first answer: FIRST_ANSWER_PATIENCE)
   fails the change with CatchUpError; nothing changed, and the Replicators it added stop.
2. JOINT: the leader appends C_old,new (voters `peers` and `old_peers`). A configuration takes
   effect when appended: from then on every decision needs a majority of both sets. When
   C_old,new is committed (its entry applied), the leader appends C_new.
   A change that keeps the voters (learners only) skips this stage: no quorum changes.
3. STABLE: C_new is in force once appended; the change completes when its entry commits. Then
   Replicators of peers no longer members stop, and a leader that is not a voter of C_new hands
   leadership to the most up-to-date voter (TimeoutNow) and steps down.

A leader may only start a change once its own term's configuration entry is committed (the
dissertation's fix for single-server changes; cheap insurance here). A new leader whose log ends
in a joint configuration rolls it forward: its term's first entry carries that configuration,
and once that commits it appends C_new (`roll_forward`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.configuration import Configuration
from actors.errors import MembershipChangeError, UnknownPeerError

FIRST_ANSWER_PATIENCE = 5.0
"""Seconds a new peer has for its first answer: its connections may need a reconnect or two
(the transport backs off up to 2 s; with CurveZMQ the peers must first read its new key)."""


class Op(enum.Enum):
    ADD_PEER = "add-peer"
    REMOVE_PEER = "remove-peer"
    CHANGE_PEERS = "change-peers"
    ADD_LEARNERS = "add-learners"
    REMOVE_LEARNERS = "remove-learners"
    PROMOTE_LEARNER = "promote"


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """One membership operation on named peers (RaftNode.add_peer and friends)."""

    op: Op
    peers: frozenset[str]

    @classmethod
    def of(cls, op: Op, peers: Iterable[str]) -> ChangeRequest:
        """Raises MembershipChangeError (a ValueError) for no peer, or a peer id that is not a
        non-empty str. (Whether ids are addresses is the embedding's business: the KV service
        checks HOST:PORT.)"""
        named = frozenset(peers)
        if not all(isinstance(p, str) and p for p in named):
            raise MembershipChangeError(f"{op.value}: a peer id is a non-empty str")
        if not named:
            raise MembershipChangeError(f"{op.value} names no peer")
        return cls(op, named)

    def target(self, conf: Configuration) -> Configuration:
        """The stable configuration this request makes of `conf` (itself: nothing to do).
        Raises UnknownPeerError / MembershipChangeError for a request that cannot apply."""
        voters, learners, named = set(conf.peers), set(conf.learners), self.peers
        op = self.op
        if op is Op.ADD_PEER:
            voters |= named
            learners -= named
        elif op is Op.REMOVE_PEER:
            unknown = named - conf.members()
            if unknown:
                raise UnknownPeerError(f"{_names(unknown)} not a member of {conf}")
            voters -= named
            learners -= named
        elif op is Op.CHANGE_PEERS:
            voters = set(named)
            learners -= named
        elif op is Op.ADD_LEARNERS:
            if named & conf.peers:
                raise MembershipChangeError(f"{_names(named & conf.peers)} already a voter")
            learners |= named
        elif op is Op.REMOVE_LEARNERS:
            if named - conf.learners:
                raise UnknownPeerError(f"{_names(named - conf.learners)} not a learner")
            learners -= named
        elif op is Op.PROMOTE_LEARNER:
            if named - conf.learners:
                raise UnknownPeerError(f"{_names(named - conf.learners)} not a learner")
            voters |= named
            learners -= named
        if not voters:
            raise MembershipChangeError(f"{op.value} {_names(named)} would leave no voter")
        return Configuration.of(voters, (), learners)


def _names(peers: Iterable[str]) -> str:
    return ",".join(sorted(peers))


class Stage(enum.Enum):
    CATCHING_UP = "catching_up"
    JOINT = "joint"
    STABLE = "stable"


@dataclass
class Catchup:
    """A new voter's progress while it catches up (times on the Node's clock)."""

    started: float  # when the change began: only an answer after it counts
    match: int = 0  # the best match index reported
    progress_at: float = 0.0  # when it last made progress (a higher match, or a chunk)
    answered: bool = False  # it answered since the change began: it is reachable


@dataclass
class ConfChange:
    """A change under way on the leader. `reply` is None for a roll-forward (nobody asked)."""

    old: Configuration
    new: Configuration  # stable: no old_peers
    reply: Any
    generation: int
    stage: Stage = Stage.CATCHING_UP
    catching_up: dict[str, Catchup] = field(default_factory=dict)

    @property
    def voters_change(self) -> bool:
        return self.old.all_peers() != self.new.peers

    def joint(self) -> Configuration:
        return Configuration.of(self.new.peers, self.old.all_peers(), self.new.learners)

    def new_voters(self) -> frozenset[str]:
        return self.new.peers - self.old.all_peers()

    def observe(
        self,
        peer: str,
        match: int,
        answered_at: float,
        installing: bool,
        last_index: int,
        margin: int,
    ) -> None:
        """Record what `peer`'s Replicator reported. It is caught up (and no longer waited
        for) once it answered since the change began and holds the log up to `margin`
        entries short of `last_index`. Installing a snapshot, an answer is progress too."""
        progress = self.catching_up.get(peer)
        if progress is None:
            return
        if answered_at >= progress.started and not progress.answered:
            progress.answered = True  # its first answer: the clock of progress starts now
            progress.progress_at = max(progress.progress_at, answered_at)
        if match > progress.match or (installing and answered_at > progress.progress_at):
            progress.progress_at = max(progress.progress_at, answered_at)
        progress.match = max(progress.match, match)
        if progress.answered and progress.match + margin >= last_index:
            del self.catching_up[peer]

    def stalled(self, now: float, patience: float) -> list[str]:
        """The peers catching up that made no progress for `patience` seconds, or, for one
        that never answered yet, for FIRST_ANSWER_PATIENCE if that is longer."""
        first = max(patience, FIRST_ANSWER_PATIENCE)
        return sorted(
            p
            for p, c in self.catching_up.items()
            if now - c.progress_at > (patience if c.answered else first)
        )
