"""Replicator: one actor per follower, for one leader term. Brings the follower's log in line
with the leader's and reports how far it got (Grant) to the BallotBox.

States (SOFAJRaft's, and etcd's `tracker.Progress`):

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

import enum
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from actors.base import RaftActor, handles
from actors.clock import Clock, TimerHandle
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import Grant, HeartbeatTick, HigherTermSeen, LogAppended, PeerContact, Unblock
from actors.options import RaftOptions
from storage.entry import LogEntry
from transport.base import Transport
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse

log = logging.getLogger(__name__)


class ReplicatorState(enum.Enum):
    PROBE = "PROBE"
    REPLICATE = "REPLICATE"
    # SNAPSHOT = "SNAPSHOT"  (later: InstallSnapshot in chunks)


@dataclass(frozen=True, slots=True)
class Inflight:
    """What an AppendEntries in flight covered: entries prev_log_index+1 .. +count."""

    seq: int
    prev_log_index: int
    count: int
    sent_at: float


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
        super().__init__()
        self.peer_id = peer_id
        self.leader_id = leader_id
        self.term = term
        self.log_view = log_view
        self.transport = transport
        self.ballot_box = ballot_box
        self.node = node
        self.clock = clock
        self.raft_options = raft_options

        self.state = ReplicatorState.PROBE
        self.blocked = False  # waiting out an RPC error; nothing is sent
        self.stopped = False  # a higher term was seen: this term is over, nothing is sent
        # Invariant: match_index < next_index, and first_index <= next_index (unless a follower
        # lost entries it had acknowledged, which is logged). match_index only grows.
        self.next_index = max(next_index, log_view.first_index, 1)
        self.match_index = 0
        # Requests in flight, oldest first. Invariant: their seqs are consecutive (every send
        # appends the next seq; a reset clears it), and in PROBE there is at most one.
        self.inflight: deque[Inflight] = deque()
        # Responses that arrived before their turn, by seq. Invariant: keys are in flight.
        self.held: dict[int, AppendEntriesResponse] = {}
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
        return (
            f"{self.state.value} next={self.next_index} match={self.match_index} "
            f"inflight={len(self.inflight)}{flags}"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def on_start(self) -> None:
        self._arm_heartbeat()
        self._send_probe()

    def on_stop(self) -> None:
        self._cancel_timers()

    # -- messages ----------------------------------------------------------------------------

    @handles(AppendEntriesResponse)
    def handle_append_entries_response(self, resp: AppendEntriesResponse) -> None:
        if self.stopped:
            return
        if resp.term > self.term:
            self.node.tell(HigherTermSeen(resp.term, self.peer_id))
            self._stop_replicating()
            return
        if resp.req_term != self.term or resp.term != self.term or resp.peer_id != self.peer_id:
            log.debug("replicator %s: stale %s", self.peer_id, resp)
            return
        self.last_response_at = self.clock.now()
        self._responded = True
        if not self.inflight or not (self.inflight[0].seq <= resp.seq <= self.inflight[-1].seq):
            log.debug("replicator %s: seq %d not in flight (%s)", self.peer_id, resp.seq, self)
            return
        if resp.seq != self.inflight[0].seq:
            self.held[resp.seq] = resp  # its turn comes once every earlier one is handled
            if len(self.held) > self.raft_options.max_inflight:  # a guard: held keys are in flight
                self._reset_pipeline()
                self._send_probe()
            return
        self._handle_in_order(resp)
        while self.inflight and (early := self.held.pop(self.inflight[0].seq, None)) is not None:
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
        oldest = self.inflight[0] if self.inflight else None
        if oldest and self.clock.now() - oldest.sent_at >= self.raft_options.replicator_rpc_timeout:
            self._block(f"no response to seq {oldest.seq} in time")
        if self.blocked:
            return
        if self.state is ReplicatorState.PROBE:
            if not self.inflight:
                self._send_probe()
        elif not self._send_more() and not self.inflight:
            self._send(self.next_index - 1, ())  # heartbeat: idle pipeline, nothing new

    @handles(Unblock)
    def on_unblock(self, msg: Unblock) -> None:
        if msg.generation != self._block_gen or not self.blocked or self.stopped:
            return
        self.blocked = False
        self._send_probe()

    # -- responses, in the order the requests were sent ---------------------------------------

    def _handle_in_order(self, resp: AppendEntriesResponse) -> None:
        sent = self.inflight.popleft()
        acked = sent.prev_log_index + sent.count
        if resp.success and resp.last_log_index >= acked:
            self.state = ReplicatorState.REPLICATE  # a probe that matched: next_index = prev+1
            if acked > self.match_index:
                self.match_index = acked
                self.ballot_box.tell(Grant(self.peer_id, acked, self.term))
            return
        if resp.success:
            # Success, yet the follower's log is shorter than what it acknowledged: it does not
            # match what was sent, so trust nothing in flight and find the agreement point again.
            log.warning("replicator %s: %s does not cover %d", self.peer_id, resp, acked)
            next_index = resp.last_log_index + 1
        elif resp.last_log_index + 1 < sent.prev_log_index + 1:
            next_index = resp.last_log_index + 1  # jump back to the follower's end
        else:
            next_index = sent.prev_log_index  # step back one entry
        if next_index <= self.match_index:
            if sent.count == 0 and sent.prev_log_index == self.match_index:
                # A probe at the very point the follower acknowledged failed: it lost entries
                # it had made durable (a broken disk). Repair it from where it really is.
                log.error(
                    "replicator %s: follower lost acknowledged entries (match %d, now %d)",
                    self.peer_id,
                    self.match_index,
                    resp.last_log_index,
                )
            else:
                # A refusal overtaken by a later success (requests reordered on the way): the
                # follower durably holds everything up to match_index, so never go below it.
                log.debug(
                    "replicator %s: refusal of seq %d overtaken; resuming after match %d",
                    self.peer_id,
                    resp.seq,
                    self.match_index,
                )
                next_index = self.match_index + 1
        self._reset_pipeline(next_index)
        self._send_probe()

    # -- sending -----------------------------------------------------------------------------

    def _send_probe(self) -> None:
        if self.blocked or self.stopped or self.inflight:
            return
        self.state = ReplicatorState.PROBE
        self._send(self.next_index - 1, ())

    def _send_more(self) -> bool:
        """REPLICATE: fill the pipeline with what the follower lacks. Returns whether it sent."""
        sent = False
        while (
            self.state is ReplicatorState.REPLICATE
            and not self.blocked
            and not self.stopped
            and len(self.inflight) < self.raft_options.max_inflight
            and self.next_index <= self.log_view.last_index
        ):
            last = self.next_index + self.raft_options.max_entries_per_request - 1
            entries = self.log_view.entries(self.next_index, last, self.raft_options.max_body_bytes)
            if not entries or entries[0].index != self.next_index:
                # Compacted away (after a snapshot): the SNAPSHOT state will take over here.
                log.warning("replicator %s: entry %d unavailable", self.peer_id, self.next_index)
                break
            if not self._send(self.next_index - 1, entries):
                break
            self.next_index += len(entries)
            sent = True
        return sent

    def _send(self, prev_log_index: int, entries: Sequence[LogEntry]) -> bool:
        """Send one AppendEntries (entries start at prev_log_index + 1) and track it. On a
        failed send, block; returns whether it went out."""
        seq = next(self._seqs)
        request = AppendEntriesRequest(
            term=self.term,
            leader_id=self.leader_id,
            prev_log_index=prev_log_index,
            prev_log_term=self.log_view.term_at(prev_log_index),
            entries=tuple(entries),
            committed_index=self.log_view.committed_index,
            seq=seq,
        )
        self.inflight.append(Inflight(seq, prev_log_index, len(entries), self.clock.now()))
        try:
            self.transport.send(self.peer_id, request)
        except Exception as exc:
            log.exception("replicator %s: send failed", self.peer_id)
            self._block(f"send failed: {exc}")
            return False
        return True

    # -- resets, blocking, timers --------------------------------------------------------------

    def _reset_pipeline(self, next_index: int | None = None) -> None:
        """Back to PROBE; every request in flight (and every held response) is forgotten, so
        their responses become stale. Without `next_index`, resume at the oldest unacked one."""
        if next_index is None:
            next_index = self.inflight[0].prev_log_index + 1 if self.inflight else self.next_index
        self.inflight.clear()
        self.held.clear()
        self.state = ReplicatorState.PROBE
        # Never below the log's first entry (what lies before needs a snapshot: later).
        self.next_index = max(next_index, self.log_view.first_index, 1)

    def _block(self, reason: str) -> None:
        log.info(
            "replicator %s: blocked for %.3fs: %s",
            self.peer_id,
            self.raft_options.replicator_block,
            reason,
        )
        self._reset_pipeline()
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
        self.inflight.clear()
        self.held.clear()
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        self._heartbeat_gen += 1
        self._block_gen += 1
        for timer in (self._heartbeat_timer, self._block_timer):
            if timer is not None:
                timer.cancel()
        self._heartbeat_timer = self._block_timer = None
