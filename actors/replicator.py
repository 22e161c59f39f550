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
- SNAPSHOT: the entries the follower needs were compacted away (or the term of the entry just
  before them): stream the leader's newest snapshot in InstallSnapshot chunks, up to
  `snapshot_max_inflight` at a time, at most `snapshot_throttle_bytes` per second
  (SOFAJRaft's ThroughputSnapshotThrottle). The follower says how many bytes it holds
  (`next_offset`), so a lost chunk, a restarted follower or a restarted transfer resumes from
  there. Once the follower has installed it, back to PROBE just after the snapshot. Heartbeats
  go on meanwhile (empty AppendEntries at index 0, which every log matches), so the follower
  does not start an election during a long transfer.

`blocked` is orthogonal: after an RPC timeout or a failed send, the replicator waits
`replicator_block` seconds (Unblock) before probing again, so there is never a hot retry loop.

Correlation: each request gets a fresh `seq` (never reused in this actor's life); responses
echo it with `req_term`. A response whose seq is no longer in flight belongs to a pipeline that
was reset and is ignored. Heartbeats are empty AppendEntries sent through the same pipeline,
so their responses are ordered with the rest.

Read rounds (actors/read_only.py): ConfirmLeadership asks for a request now; the first answer
(in this term, success or not) to a request sent after it - a later seq - is acknowledged to
the Node (LeadershipAck). Seqs, not clocks, order "after", so the rule needs no time at all.
For leases, PeerContact carries the send time of the newest request the follower answered.

Runs on its own pykka thread (or a test's thread through ActorHarness). Timer callbacks only
tell this actor a message carrying a generation; a stale generation is ignored.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from actors import trace
from actors.base import RaftActor, handles
from actors.clock import Clock, TimerHandle
from actors.log_view import LogView
from actors.mailbox import Mailbox
from actors.messages import (
    ChunkTick,
    ConfirmLeadership,
    Grant,
    HeartbeatTick,
    HigherTermSeen,
    LeadershipAck,
    LogAppended,
    PeerContact,
    Unblock,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.progress import BackOff, Placement, Progress, ReplicatorState
from actors.snapshot_transfer import SnapshotTransfer, Throttle
from storage.base import SnapshotStore
from storage.entry import LogEntry
from transport.base import Transport
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
)

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
        snapshots: SnapshotStore | None = None,
        metrics: RaftMetrics | None = None,
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
        self.snapshots = snapshots

        # State, next/match index, the in-flight window and the held responses.
        self.progress: Progress[AppendEntriesResponse] = Progress(next_index)
        self.transfer: SnapshotTransfer | None = None  # in SNAPSHOT: the snapshot being sent
        self.throttle = Throttle(
            raft_options.snapshot_throttle_bytes, raft_options.snapshot_chunk_bytes, clock.now()
        )
        self._chunk_gen = 0
        self._chunk_timer: TimerHandle | None = None
        self.blocked = False  # waiting out an RPC error; nothing is sent
        self.stopped = False  # a higher term was seen: this term is over, nothing is sent
        self._seqs = itertools.count(1)
        self._last_seq = 0  # the seq of the newest request sent
        self._confirm: tuple[int, int] | None = None  # read round, acked by a seq above this
        self.acked_sent_at = -float("inf")  # send time of the newest request answered (lease)
        self.last_response_at = 0.0
        self._responded = False  # a response arrived since the last PeerContact
        self._heartbeat_gen = 0
        self._heartbeat_timer: TimerHandle | None = None
        self._block_gen = 0
        self._block_timer: TimerHandle | None = None
        # This actor's own cells (actors/metrics.py): written on this thread only, retired at
        # shutdown (a Replicator lives for one term; its counts stay in the series).
        metrics = metrics or RaftMetrics()
        self._batch_entries = metrics.append_entries_entries.cell()
        self._batch_bytes = metrics.append_entries_bytes.cell()

    def __str__(self) -> str:
        flags = f" {self.transfer}" if self.transfer is not None else ""
        flags += " blocked" if self.blocked else ""
        flags += " stopped" if self.stopped else ""
        return f"{self.progress}{flags}"

    # -- lifecycle ---------------------------------------------------------------------------

    def startup(self) -> None:
        self._arm_heartbeat()
        self._send_probe()

    def shutdown(self) -> None:
        self._cancel_timers()
        self._end_transfer()
        self._batch_entries.retire()
        self._batch_bytes.retire()

    # -- messages ----------------------------------------------------------------------------

    @handles(AppendEntriesResponse)
    def handle_append_entries_response(self, resp: AppendEntriesResponse) -> None:
        if trace.ON:
            trace.mark("leader.ack")
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
        self._confirmed_by(resp.seq)
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
        self._send_for_round()

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
            self.node.tell(
                PeerContact(
                    self.peer_id,
                    self.term,
                    self.last_response_at,
                    str(self),
                    self.progress.match_index,
                    self.progress.state.value.lower(),
                    len(self.progress.inflight),
                    self.acked_sent_at,
                )
            )
        now, timeout = self.clock.now(), self.raft_options.replicator_rpc_timeout
        if self.transfer is not None:
            self._heartbeat_during_transfer(now, timeout)
            return
        if (oldest := self.progress.overdue(now, timeout)) is not None:
            self._block(f"no response to seq {oldest.seq} in time")
        if self.blocked:
            return
        if self.progress.state is ReplicatorState.PROBE:
            if not self.progress.inflight:
                self._send_probe()
        elif not self._send_more() and not self.progress.inflight:
            self._send(())  # heartbeat: idle pipeline, nothing new

    @handles(ConfirmLeadership)
    def on_confirm_leadership(self, msg: ConfirmLeadership) -> None:
        if msg.term != self.term or self.stopped:
            return
        self._confirm = (msg.round, self._last_seq)
        self._send_for_round()

    def _send_for_round(self) -> None:
        """A read round waits: have a request sent after it in flight, now rather than at the
        next heartbeat (if nothing allows one now, the next request that goes out serves)."""
        if self._confirm is None or self._last_seq > self._confirm[1]:
            return  # no round, or its request is out already
        if self.blocked or self.stopped or self.transfer is not None:
            return
        if self.progress.state is ReplicatorState.PROBE:
            self._send_probe()  # only when no probe is in flight
        elif not self._send_more() and not self.progress.inflight:
            # A heartbeat, only into an empty pipeline (as at a tick): behind requests in
            # flight it would claim entries the follower may not have yet. Otherwise the next
            # request sent (new entries, or this heartbeat once the pipeline drains) serves.
            self._send(())

    def _confirmed_by(self, seq: int) -> None:
        """The follower answered request `seq` in this term."""
        sent_at = self.progress.sent_at(seq)
        if sent_at is not None and sent_at > self.acked_sent_at:
            self.acked_sent_at = sent_at
        if self._confirm is not None and seq > self._confirm[1]:
            self.node.tell(LeadershipAck(self.peer_id, self.term, self._confirm[0]))
            self._confirm = None

    def _next_seq(self) -> int:
        self._last_seq = next(self._seqs)
        return self._last_seq

    @handles(Unblock)
    def on_unblock(self, msg: Unblock) -> None:
        if msg.generation != self._block_gen or not self.blocked or self.stopped:
            return
        self.blocked = False
        self._send_probe()

    @handles(InstallSnapshotResponse)
    def handle_install_snapshot_response(self, resp: InstallSnapshotResponse) -> None:
        if self.stopped or resp.peer_id != self.peer_id:
            return
        if resp.term > self.term:
            self.node.tell(HigherTermSeen(resp.term, self.peer_id))
            self._stop_replicating()
            return
        transfer = self.transfer
        if resp.req_term != self.term or resp.term != self.term or transfer is None:
            return
        self.last_response_at = self.clock.now()
        self._responded = True
        index = transfer.meta.last_index
        if resp.last_included_index != index:
            return  # about another snapshot
        if transfer.answered(resp.seq, resp.next_offset) is None:
            return  # stale: its chunk was sent again since
        if not resp.success:
            self._end_transfer()
            self._block(f"the follower refused snapshot {index}")
        elif resp.done:
            self._log_installed(transfer)
            self._end_transfer()
            if self.progress.snapshot_installed(index):
                self.ballot_box.tell(Grant(self.peer_id, index, self.term))
            self._send_probe()
        else:
            self._send_chunks()

    @handles(ChunkTick)
    def on_chunk_tick(self, msg: ChunkTick) -> None:
        if msg.generation == self._chunk_gen:
            self._send_chunks()

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
        if self.blocked or self.stopped or self.progress.inflight or self.transfer is not None:
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
                self._start_transfer()  # compacted away since the probe matched
                break
            if not self._send(entries):
                break
            sent = True
        return sent

    def _send(self, entries: Sequence[LogEntry]) -> bool:
        """Send one AppendEntries at next_index (entries from there on; none for a probe or a
        heartbeat) and track it. On a failed send, block; returns whether it went out."""
        prev_log_index = self.progress.next_index - 1
        prev_log_term = self.log_view.known_term(prev_log_index)
        if prev_log_term is None:
            # SOFAJRaft's fillCommonFields case: the entry before next_index was compacted away.
            self._start_transfer()
            return False
        seq = self._next_seq()
        request = AppendEntriesRequest(
            term=self.term,
            leader_id=self.leader_id,
            prev_log_index=prev_log_index,
            prev_log_term=prev_log_term,
            entries=tuple(entries),
            committed_index=self.log_view.committed_index,
            seq=seq,
            cluster_id=self.log_view.cluster_id,
        )
        self.progress.sent(seq, len(entries), self.clock.now())
        try:
            self.transport.send(self.peer_id, request)
            if trace.ON:
                trace.mark("leader.send")
        except Exception as exc:
            log.exception("replicator %s: send failed", self.peer_id)
            self._block(f"send failed: {exc}")
            return False
        if entries:
            self._batch_entries.observe(len(entries))
            self._batch_bytes.observe(sum([len(entry.data) for entry in entries]))
        return True

    # -- sending a snapshot ------------------------------------------------------------------

    def _start_transfer(self) -> None:
        """The follower needs what only the snapshot holds: send the newest one, once it is
        known to be listening (a snapshot is too big to send into the void every block)."""
        if self.clock.now() - self.last_response_at > self.raft_options.replicator_rpc_timeout:
            self._send_or_block(self._heartbeat_at_zero())  # its answer says it is back
            self._block("the follower needs a snapshot; waiting for it to answer first")
            return
        if self.snapshots is None or (meta := self.snapshots.latest()) is None:
            log.error(
                "replicator %s: entry %d compacted but no snapshot",
                self.peer_id,
                self.progress.next_index,
            )
            self._block("no snapshot to send")
            return
        try:
            reader = self.snapshots.open(meta.last_index)
        except Exception as exc:
            log.exception("replicator %s: cannot open snapshot %d", self.peer_id, meta.last_index)
            self._block(f"cannot open snapshot: {exc}")
            return
        log.info(
            "replicator %s: next index %d compacted; sending snapshot %d (%d bytes)",
            self.peer_id,
            self.progress.next_index,
            meta.last_index,
            reader.meta.size,
        )
        self.progress.become_snapshot()
        options = self.raft_options
        self.transfer = SnapshotTransfer(
            reader, self.clock.now(), options.snapshot_chunk_bytes, options.snapshot_max_inflight
        )
        self._send_chunks()

    def _send_chunks(self) -> None:
        """Fill the chunk window, as far as the throttle allows, up to the final chunk."""
        while (transfer := self.transfer) is not None and (chunk := transfer.next_chunk()):
            offset, data = chunk
            wait = self.throttle.wait(len(data), self.clock.now())
            if wait > 0:
                self._chunk_gen += 1
                self._chunk_timer = self.tell_later(self.clock, wait, ChunkTick(self._chunk_gen))
                return
            self._send_chunk(transfer, offset, data)

    def _send_chunk(self, transfer: SnapshotTransfer, offset: int, data: bytes) -> None:
        meta, seq = transfer.meta, self._next_seq()
        done = transfer.sent(seq, offset, len(data), self.clock.now())
        request = InstallSnapshotRequest(
            term=self.term,
            leader_id=self.leader_id,
            last_included_index=meta.last_index,
            last_included_term=meta.last_term,
            conf=meta.conf,
            size=meta.size,
            checksum=meta.checksum,
            offset=offset,
            data=data,
            done=done,
            seq=seq,
            cluster_id=self.log_view.cluster_id,
        )
        self._send_or_block(request)

    def _heartbeat_at_zero(self) -> AppendEntriesRequest:
        """An empty AppendEntries at index 0: every log matches there and it moves no commit
        index, so it only says "I lead" and asks for an answer (outside the pipeline)."""
        seq = self._next_seq()
        return AppendEntriesRequest(
            self.term, self.leader_id, 0, 0, (), 0, seq, self.log_view.cluster_id
        )

    def _heartbeat_during_transfer(self, now: float, timeout: float) -> None:
        """A heartbeat at index 0, and a resend of chunks overdue; if the follower has not
        answered anything for as long, it is gone: stop sending, and probe until it is back."""
        if not self._send_or_block(self._heartbeat_at_zero()) or self.transfer is None:
            return
        if now - self.last_response_at >= timeout and self.transfer.inflight:
            self._end_transfer()
            self._block("the follower stopped answering during a snapshot transfer")
        elif self.transfer.resend_overdue(now, timeout):
            self._send_chunks()

    def _send_or_block(self, request: AppendEntriesRequest | InstallSnapshotRequest) -> bool:
        """Send a transfer's message; on a failure, end the transfer and block."""
        try:
            self.transport.send(self.peer_id, request)
        except Exception as exc:
            log.exception("replicator %s: send failed", self.peer_id)
            self._end_transfer()
            self._block(f"send failed: {exc}")
            return False
        return True

    def _log_installed(self, transfer: SnapshotTransfer) -> None:
        mib = transfer.size / (1 << 20)
        sending = max(transfer.final_sent_at - transfer.started_at, 1e-9)
        log.info(
            "replicator %s: snapshot %d installed: %.1f MiB sent in %.3f s (%.1f MiB/s), "
            "installed %.3f s later",
            self.peer_id,
            transfer.meta.last_index,
            mib,
            sending,
            mib / sending,
            self.clock.now() - transfer.final_sent_at,
        )

    def _end_transfer(self) -> None:
        transfer, self.transfer = self.transfer, None
        self._chunk_gen += 1
        if self._chunk_timer is not None:
            self._chunk_timer.cancel()
            self._chunk_timer = None
        if transfer is not None:
            transfer.close()

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
        self._end_transfer()

    def _cancel_timers(self) -> None:
        self._heartbeat_gen += 1
        self._block_gen += 1
        for timer in (self._heartbeat_timer, self._block_timer):
            if timer is not None:
                timer.cancel()
        self._heartbeat_timer = self._block_timer = None
