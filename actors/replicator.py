"""Replicator: one actor per follower, for one leader term. Brings the follower's log in line
with the leader's and reports how far it got (Grant) to the BallotBox.

States (SOFAJRaft's, and etcd's `tracker.Progress`); their rules live in actors/progress.py, a
pure object this actor drives (it keeps only the messages, timers, sending, telling and logging):

- PROBE: find where the logs agree. At most one request in flight, with no entries. On a
  mismatch, back `next_index` off (jumping straight past the follower's last index when that is
  lower), and probe again; on success switch to REPLICATE.
- REPLICATE: pipeline. Up to `max_inflight` AppendEntries in flight, each up to
  `max_entries_per_request` entries / `max_body_bytes`, `next_index` advanced optimistically.
  Responses are applied strictly in the order the requests were sent (an early one is held until
  its turn); anything that does not fit (a mismatch, too many held) drops back to PROBE.
- SNAPSHOT (later): the entries the follower needs were compacted; send InstallSnapshot chunks.

`blocked` is orthogonal: after an RPC timeout or a failed send, the replicator waits
`replicator_block` seconds (Unblock) before probing again, so there is never a hot retry loop.

Correlation: each request gets a fresh `seq` (never reused in this actor's life); responses
echo it with `req_term`. A response whose seq is no longer in flight belongs to a pipeline that
was reset and is ignored. Heartbeats are empty AppendEntries sent through the same pipeline,
so their responses are ordered with the rest.

Runs on its own pykka thread (or a test's thread through ActorHarness). Timer callbacks only
tell this actor a message carrying a generation; a stale generation is ignored.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from actors.base import RaftActor, handles
from actors.clock import Clock, TimerHandle
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import Grant, HeartbeatTick, HigherTermSeen, LogAppended, PeerContact, Unblock
from actors.options import RaftOptions
from actors.progress import BackOff, Placement, Progress, ReplicatorState
from storage.entry import LogEntry
from transport.base import Transport
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse

__all__ = ["Replicator", "ReplicatorState"]

log = logging.getLogger(__name__)


class Replicator(RaftActor):
    """Replicates the leader's log to `peer_id` during `term`; see the module docstring."""

    def __init__(
        self,
        peer_id: str,
        leader_id: str,
        term: int,
        next_index: int,
        log_view: LogView,
        transport: Transport,
        ballot_box: Mailbox,
        node: Mailbox,
        clock: Clock,
        raft_options: RaftOptions,
    ) -> None:
        super().__init__(supervisor=node)
        self.peer_id = peer_id
        self.leader_id = leader_id
        self.term = term
        self.log_view = log_view
        self.transport = transport
        self.ballot_box = ballot_box
        self.node = node
        self.clock = clock
        self.raft_options = raft_options

        # State, next/match index, the in-flight window and the held responses.
        self.progress: Progress[AppendEntriesResponse] = Progress(next_index, log_view.first_index)
        self.blocked = False  # waiting out an RPC error; nothing is sent
        self.stopped = False  # a higher term was seen: this term is over, nothing is sent
        self._seqs = itertools.count(1)
        self.last_response_at = 0.0
        self._responded = False  # a response arrived since the last PeerContact
        self._heartbeat_gen = 0
        self._heartbeat_timer: TimerHandle | None = None
        self._block_gen = 0
        self._block_timer: TimerHandle | None = None

    def __str__(self) -> str:
        flags = " blocked" if self.blocked else ""
        flags += " stopped" if self.stopped else ""
        return f"{self.progress}{flags}"

    # -- lifecycle ---------------------------------------------------------------------------

    def startup(self) -> None:
        self._arm_heartbeat()
        self._send_probe()

    def shutdown(self) -> None:
        self._cancel_timers()

    # -- messages ----------------------------------------------------------------------------

    @handles(AppendEntriesResponse)
    def handle_append_entries_response(self, resp: AppendEntriesResponse) -> None:
        if self.stopped:
            return
        if resp.peer_id != self.peer_id:
            log.warning("replicator %s: a response from %s; ignored", self.peer_id, resp.peer_id)
            return
        if resp.term > self.term:
            self.node.tell(HigherTermSeen(resp.term, self.peer_id))
            self._stop_replicating()
            return
        if resp.req_term != self.term or resp.term != self.term:
            log.debug("replicator %s: stale %s", self.peer_id, resp)
            return
        self.last_response_at = self.clock.now()
        self._responded = True
        placement = self.progress.place(resp.seq)
        if placement is Placement.STALE:
            log.debug("replicator %s: seq %d not in flight (%s)", self.peer_id, resp.seq, self)
            return
        if placement is Placement.EARLY:
            self.progress.hold(resp.seq, resp)  # its turn comes once every earlier one is handled
            if len(self.progress.held) > self.raft_options.max_inflight:  # a guard: see `held`
                self.progress.become_probe()
                self._send_probe()
            return
        self._handle_in_order(resp)
        while (early := self.progress.pop_held()) is not None:
            self._handle_in_order(early)
        self._send_more()

    @handles(LogAppended)
    def on_log_appended(self, msg: LogAppended) -> None:
        self._send_more()

    @handles(HeartbeatTick)
    def on_heartbeat_tick(self, msg: HeartbeatTick) -> None:
        if msg.generation != self._heartbeat_gen or self.stopped:
            return
        self._arm_heartbeat()
        if self._responded:
            self._responded = False
            self.node.tell(PeerContact(self.peer_id, self.term, self.last_response_at, str(self)))
        now, timeout = self.clock.now(), self.raft_options.replicator_rpc_timeout
        if (oldest := self.progress.overdue(now, timeout)) is not None:
            self._block(f"no response to seq {oldest.seq} in time")
        if self.blocked:
            return
        if self.progress.state is ReplicatorState.PROBE:
            if not self.progress.inflight:
                self._send_probe()
        elif not self._send_more() and not self.progress.inflight:
            self._send(())  # heartbeat: idle pipeline, nothing new

    @handles(Unblock)
    def on_unblock(self, msg: Unblock) -> None:
        if msg.generation != self._block_gen or not self.blocked or self.stopped:
            return
        self.blocked = False
        self._send_probe()

    # -- responses, in the order the requests were sent ---------------------------------------

    def _handle_in_order(self, resp: AppendEntriesResponse) -> None:
        sent = self.progress.pop_oldest()
        if sent.acknowledged_by(resp.success, resp.last_log_index):
            self.progress.become_replicate()  # a probe that matched: next_index = prev+1
            if self.progress.maybe_update(sent.last_index):
                self.ballot_box.tell(Grant(self.peer_id, sent.last_index, self.term))
            return
        hint = None
        if not resp.success and resp.conflict_term > 0:
            hint = self._skip_conflicting_term(resp, sent.prev_log_index)
        decision = self.progress.back_off(sent, resp.success, resp.last_log_index, hint)
        if resp.success:  # short: the follower's log does not match what was sent
            log.warning("replicator %s: %s does not cover %d", self.peer_id, resp, sent.last_index)
        if decision.rule is BackOff.LOST_ACKED:
            log.error(
                "replicator %s: follower lost acknowledged entries (match %d, now %d)",
                self.peer_id,
                self.progress.match_index,
                resp.last_log_index,
            )
        elif decision.rule is BackOff.OVERTAKEN:
            log.debug(
                "replicator %s: refusal of seq %d overtaken; resuming after match %d",
                self.peer_id,
                resp.seq,
                self.progress.match_index,
            )
        self.progress.become_probe(decision.next_index)
        self._send_probe()

    def _skip_conflicting_term(self, resp: AppendEntriesResponse, prev_log_index: int) -> int:
        """Where to probe after a mismatch the follower described (Raft dissertation §5.3): just
        after our last entry of its conflicting term if we have that term, else the first
        index the follower holds of it. Either skips the whole term in one round trip."""
        ours = self.log_view.last_index_of_term(resp.conflict_term, prev_log_index)
        return ours + 1 if ours is not None else max(resp.conflict_index, 1)

    def enter_error(self, reason: str) -> None:
        self._stop_replicating()

    # -- sending -----------------------------------------------------------------------------

    def _send_probe(self) -> None:
        if self.blocked or self.stopped or self.progress.inflight:
            return
        self.progress.become_probe()  # nothing in flight: this only makes the state PROBE
        self._send(())

    def _send_more(self) -> bool:
        """REPLICATE: fill the pipeline with what the follower lacks. Returns whether it sent."""
        sent = False
        while (
            self.progress.can_send(self.raft_options.max_inflight)
            and not self.blocked
            and not self.stopped
            and self.progress.next_index <= self.log_view.last_index
        ):
            first = self.progress.next_index
            last = first + self.raft_options.max_entries_per_request - 1
            entries = self.log_view.entries(first, last, self.raft_options.max_body_bytes)
            if not entries or entries[0].index != first:
                # Compacted away (after a snapshot): the SNAPSHOT state will take over here.
                log.warning("replicator %s: entry %d unavailable", self.peer_id, first)
                break
            if not self._send(entries):
                break
            sent = True
        return sent

    def _send(self, entries: Sequence[LogEntry]) -> bool:
        """Send one AppendEntries at next_index (entries from there on; none for a probe or a
        heartbeat) and track it. On a failed send, block; returns whether it went out."""
        seq = next(self._seqs)
        prev_log_index = self.progress.next_index - 1
        request = AppendEntriesRequest(
            term=self.term,
            leader_id=self.leader_id,
            prev_log_index=prev_log_index,
            prev_log_term=self.log_view.term_at(prev_log_index),
            entries=tuple(entries),
            committed_index=self.log_view.committed_index,
            seq=seq,
        )
        self.progress.sent(seq, len(entries), self.clock.now())
        try:
            self.transport.send(self.peer_id, request)
        except Exception as exc:
            log.exception("replicator %s: send failed", self.peer_id)
            self._block(f"send failed: {exc}")
            return False
        return True

    # -- blocking, timers --------------------------------------------------------------------

    def _block(self, reason: str) -> None:
        log.info(
            "replicator %s: blocked for %.3fs: %s",
            self.peer_id,
            self.raft_options.replicator_block,
            reason,
        )
        self.progress.become_probe()
        self.blocked = True
        self._block_gen += 1
        self._block_timer = self.tell_later(
            self.clock, self.raft_options.replicator_block, Unblock(self._block_gen)
        )

    def _arm_heartbeat(self) -> None:
        self._heartbeat_gen += 1
        self._heartbeat_timer = self.tell_later(
            self.clock, self.raft_options.heartbeat_interval, HeartbeatTick(self._heartbeat_gen)
        )

    def _stop_replicating(self) -> None:
        self.stopped = True
        self.progress.clear_inflight()
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        self._heartbeat_gen += 1
        self._block_gen += 1
        for timer in (self._heartbeat_timer, self._block_timer):
            if timer is not None:
                timer.cancel()
        self._heartbeat_timer = self._block_timer = None
