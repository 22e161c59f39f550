# Each method takes `self: Node`: a mixin's methods run on the Node. mypy's rule that a self
# type be a supertype of the class (code "misc") does not fit a mixin; it is off for this file.
# mypy: disable-error-code="misc"
"""The Node's handling of leadership and membership changes: leadership transfer
(actors/transfer.py) and configuration changes (actors/membership.py), with the leader's set of
Replicators that both change. A part of the Node actor (a mixin: every method runs on the
Node's thread, on the Node's state), kept apart so that each reads in one sitting.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from actors.base import handles
from actors.configuration import Configuration
from actors.errors import (
    CatchUpError,
    ChangeInProgressError,
    RaftError,
    TransferLeadershipError,
    UnknownPeerError,
)
from actors.futures import CompletionFuture, complete, fail
from actors.membership import Catchup, ConfChange, Stage
from actors.messages import (
    CatchupCheck,
    ChangeMembership,
    ConfEntryApplied,
    TermEntryApplied,
    TransferLeadership,
    TransferTimeout,
)
from actors.role import Role
from actors.transfer import Transfer, pick_target
from transport.rpc import MAX_TERM, TimeoutNowRequest

if TYPE_CHECKING:
    from actors.node import Node

log = logging.getLogger("actors.node")


class LeadershipChanges:
    """Mixed into Node. Its state (initialised by Node.__init__):"""

    _transfer: Transfer | None  # leader: a leadership transfer under way
    _transfer_gen: int
    _change: ConfChange | None  # leader: a membership change under way
    _change_gen: int
    _term_committed: bool  # leader: its term's first entry is applied
    _waiting_change: ChangeMembership | None  # leader: a change asked for before that

    def _replication_targets(self: Node) -> frozenset[str]:
        """Whom a leader replicates to: every member of the configuration in force, and while
        a change runs also those it adds (catching up) and removes (until C_new commits)."""
        targets = self.conf.members()
        change = self._change
        if change is not None:
            targets |= change.old.members() | change.new.members()
        return targets - {self.peer_id}

    def _sync_replicators(self: Node, next_index: int | None = None) -> None:
        """Leader: run a Replicator for exactly the replication targets. A new one starts at
        `next_index` (default: after the last entry; it probes back from there)."""
        wanted = self._replication_targets()
        for peer in sorted(set(self._replicating) - wanted):
            self._stop_replicator(peer)
        start = next_index if next_index is not None else self.log_view.last_index + 1
        now = self.clock.now()
        for peer in sorted(wanted - set(self._replicating)):
            self._reach(peer)
            mailbox = self.replicators.start(peer, self.term, start)
            self._replicating[peer] = mailbox
            self._peer_contact.setdefault(peer, now)

    # -- leadership transfer (actors/transfer.py) ---------------------------------------------

    @handles(TransferLeadership)
    def on_transfer_leadership(self: Node, msg: TransferLeadership) -> None:
        if self._transfer is not None:
            fail(msg.reply, ChangeInProgressError(f"handing over to {self._transfer.target}"))
            return
        if self._change is not None and self.role is Role.LEADER:
            fail(msg.reply, ChangeInProgressError("a membership change is under way"))
            return
        if self.role is not Role.LEADER:
            fail(msg.reply, self._not_leading())
            return
        if msg.target == self.peer_id:
            complete(msg.reply, self.peer_id)  # already there
            return
        match = {peer: self._match_index(peer) for peer in self._others}
        try:
            target = pick_target(self.peer_id, self.conf, msg.target, match)
        except UnknownPeerError as error:
            fail(msg.reply, error)
            return
        self._transfer_gen += 1
        self._transfer = Transfer(target, msg.reply, self._transfer_gen)
        log.info("%s: handing leadership of term %d to %s", self.peer_id, self.term, target)
        delay = self.raft_options.election_timeout
        self.tell_later(self.clock, delay, TransferTimeout(self._transfer_gen))
        self._maybe_send_timeout_now()

    def _maybe_send_timeout_now(self: Node) -> None:
        transfer = self._transfer
        assert transfer is not None
        if transfer.ready(self._match_index(transfer.target), self.log_view.last_index):
            transfer.timeout_now_sent = True
            self._reads.lease_revoked = True  # before the target can collect a single vote
            self.transport.send(transfer.target, TimeoutNowRequest(self.term, self.peer_id))

    @handles(TransferTimeout)
    def on_transfer_timeout(self: Node, msg: TransferTimeout) -> None:
        transfer = self._transfer
        if transfer is None or transfer.generation != msg.generation:
            return
        log.warning("%s: %s did not take over in time; leading on", self.peer_id, transfer.target)
        self._transfer = None
        fail(
            transfer.reply,
            TransferLeadershipError(
                f"{transfer.target} did not take over within the election timeout"
            ),
        )

    def _end_transfer(self: Node) -> None:
        """Leadership ended: a transfer that sent TimeoutNow did its part (the new term is,
        most likely, the target's); one that had not got that far failed."""
        transfer, self._transfer = self._transfer, None
        if transfer is None:
            return
        if transfer.timeout_now_sent:
            complete(transfer.reply, transfer.target)
        else:
            fail(transfer.reply, TransferLeadershipError("stepped down before the handover"))

    @handles(TimeoutNowRequest)
    def handle_timeout_now(self: Node, req: TimeoutNowRequest) -> None:
        if req.leader_id != self.leader_id and req.leader_id not in self.conf.all_peers():
            self.rejections.refuse("timeout_now_from_non_member", req.leader_id)
            return
        current = req.term == self.term and req.leader_id == self.leader_id
        if self.role is not Role.FOLLOWER or not current or self.peer_id not in self.conf.peers:
            log.info(
                "%s: ignoring TimeoutNow from %s (term %d)", self.peer_id, req.leader_id, req.term
            )
            return
        if self.term >= MAX_TERM:
            return
        log.info("%s: %s hands leadership over; campaigning now", self.peer_id, req.leader_id)
        self._start_election(transfer=True)

    # -- membership changes (actors/membership.py) --------------------------------------------

    @handles(ChangeMembership)
    def on_change_membership(self: Node, msg: ChangeMembership) -> None:
        if self.role is not Role.LEADER or self._transfer is not None:
            fail(msg.reply, self._not_leading())
            return
        if self._change is not None:
            busy = f"a change to {self._change.new} is {self._change.stage.value}"
            fail(msg.reply, ChangeInProgressError(busy))
            return
        if not self._term_committed:
            # A leader changes nothing before its own term's first entry commits (a round
            # trip after winning): the request waits for it, as the only one that may.
            if self._waiting_change is not None:
                fail(msg.reply, ChangeInProgressError("another change waits for this term"))
            else:
                self._waiting_change = msg
            return
        try:
            new = msg.request.target(self.conf)
        except RaftError as error:
            fail(msg.reply, error)
            return
        if new == self.conf:
            complete(msg.reply, new)  # nothing to change: done already
            return
        self._change_gen += 1
        change = ConfChange(self.conf, new, msg.reply, self._change_gen)
        log.info("%s: changing the configuration %s -> %s", self.peer_id, change.old, new)
        now = self.clock.now()
        for peer in change.new_voters():
            change.catching_up[peer] = Catchup(now, self._match_index(peer), now)
        self._change = change
        self._sync_replicators()
        self._arm_catchup_check()
        self._advance_change()

    def _advance_change(self: Node) -> None:
        """Move the change on as far as it can go now."""
        change = self._change
        assert change is not None
        if change.stage is not Stage.CATCHING_UP or change.catching_up:
            return
        if change.voters_change:
            change.stage = Stage.JOINT
            self._append_conf(change.joint())
        else:
            change.stage = Stage.STABLE
            self._append_conf(change.new)

    def _append_conf(self: Node, conf: Configuration) -> None:
        change = self._change
        assert change is not None
        generation = change.generation
        applied = CompletionFuture(
            lambda _, error: self.tell_self(ConfEntryApplied(generation, error))
        )
        assert self._leader_log is not None  # a change starts once the term's entry committed
        self._leader_log.append_configuration(conf, applied)

    def _arm_catchup_check(self: Node) -> None:
        delay = self.raft_options.election_timeout / 2
        self.tell_later(self.clock, delay, CatchupCheck(self._change_gen))

    @handles(CatchupCheck)
    def on_catchup_check(self: Node, msg: CatchupCheck) -> None:
        change = self._change
        if change is None or change.generation != msg.generation:
            return
        if change.stage is not Stage.CATCHING_UP:
            return
        stalled = change.stalled(self.clock.now(), self.raft_options.election_timeout)
        if stalled and change.stage is Stage.CATCHING_UP:
            log.warning("%s: %s did not catch up; change abandoned", self.peer_id, stalled)
            self._end_change(
                CatchUpError(
                    f"{','.join(stalled)} made no progress catching up for an election "
                    f"timeout (unreachable or too slow): nothing changed"
                )
            )
            self._sync_replicators()
        elif change.stage is Stage.CATCHING_UP:
            self._arm_catchup_check()

    @handles(ConfEntryApplied)
    def on_conf_entry_applied(self: Node, msg: ConfEntryApplied) -> None:
        change = self._change
        if change is None or change.generation != msg.generation or self.role is not Role.LEADER:
            return
        if msg.error is not None:
            self._end_change(msg.error)
            return
        if change.stage is Stage.JOINT:
            change.stage = Stage.STABLE
            self._append_conf(change.new)
            return
        log.info("%s: configuration %s committed", self.peer_id, change.new)
        self._change = None
        if change.reply is not None:
            complete(change.reply, change.new)
        self._sync_replicators()
        if self.peer_id not in change.new.peers:
            self._leave()

    def _leave(self: Node) -> None:
        """This leader is no voter of the configuration it just committed: hand leadership to
        the most up-to-date voter (TimeoutNow, no waiting) and step down."""
        match = {peer: self._match_index(peer) for peer in self.conf.peers}
        try:
            target = pick_target(self.peer_id, self.conf, None, match)
        except UnknownPeerError:
            target = None
        log.info("%s: removed; handing leadership to %s", self.peer_id, target)
        if target is not None:
            self.transport.send(target, TimeoutNowRequest(self.term, self.peer_id))
        self._become_follower(self.term, None)

    def _end_change(self: Node, error: BaseException) -> None:
        change, self._change = self._change, None
        if change is not None and change.reply is not None:
            fail(change.reply, error)

    @handles(TermEntryApplied)
    def on_term_entry_applied(self: Node, msg: TermEntryApplied) -> None:
        if msg.error is not None or self.role is not Role.LEADER or msg.term != self.term:
            return
        self._term_committed = True
        waiting, self._waiting_change = self._waiting_change, None
        conf = self.conf
        if conf.is_joint and self._change is None:
            # A predecessor's change stopped half-way: C_old,new is committed again (this
            # term's first entry), so finish it (Raft dissertation §4.3).
            log.info("%s: rolling the joint configuration %s forward", self.peer_id, conf)
            self._change_gen += 1
            old = Configuration.of(conf.old_peers, (), conf.learners)
            self._change = ConfChange(old, conf.stable(), None, self._change_gen, Stage.STABLE)
            self._append_conf(conf.stable())
        if waiting is not None:
            self.on_change_membership(waiting)  # busy if the roll-forward runs
