"""Replicator, SNAPSHOT state: a follower whose next entries were compacted away gets the
leader's snapshot in InstallSnapshot chunks (window, rewinds, throttle, heartbeats meanwhile),
then is probed right after it. Transcripts of what the leader sent and the follower answered.

The leader's log: entries 1..20 (terms 1 x4, 2 x8, 3 x8), a snapshot 10@2 of 1000 bytes, and
the log compacted to 11..20 (LogView.compact, as the LogManager does after SnapshotSaved)."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import pytest

from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.log_view import LogView
from actors.messages import ChunkTick, Grant, HigherTermSeen, LogAppended, PeerContact
from actors.options import RaftOptions
from actors.replicator import Replicator, ReplicatorState
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage, MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    RpcMessage,
)

PEER, LEADER, TERM = "b", "a", 3
HEARTBEAT = 0.1  # election_timeout 1.0 / heartbeat_ratio 10
TERMS = [1] * 4 + [2] * 8 + [3] * 8  # entries 1..20
CONF = Configuration.of((LEADER, PEER, "c")).encode()
DATA = bytes(i % 251 for i in range(1000))  # the snapshot's data
SNAP_INDEX, SNAP_TERM = 10, 2


def entry(index: int, term: int) -> LogEntry:
    return LogEntry(index, term, EntryType.DATA, b"x")


def commit_snapshot(snapshots: MemorySnapshotStorage, index: int, data: bytes) -> SnapshotMeta:
    writer = snapshots.create_writer(SnapshotMeta(index, TERMS[index - 1], CONF))
    writer.write(data)
    return snapshots.commit(writer)


class Rep:
    """A Replicator for follower "b" in term 3 over a compacted log, on the test thread."""

    def __init__(
        self,
        next_index: int,
        data: bytes = DATA,
        snapshots: bool = True,
        transport: RecordingTransport | None = None,
        clock: ManualClock | None = None,
        **options: Any,
    ) -> None:
        storage = MemoryLogStorage()
        storage.append_entries([entry(i, t) for i, t in enumerate(TERMS, start=1)])
        self.log_view = LogView(storage)
        self.log_view.set_committed(15)
        self.snapshots = MemorySnapshotStorage()
        self.meta = commit_snapshot(self.snapshots, SNAP_INDEX, data)
        self.log_view.compact(self.meta, SNAP_INDEX + 1)
        self.clock = clock or ManualClock()
        self.transport = transport or RecordingTransport(LEADER)
        self.ballot_box = RecordingMailbox("ballot_box")
        self.node = RecordingMailbox("node")
        opts = {
            "max_inflight": 3,
            "max_entries_per_request": 2,
            "snapshot_chunk_bytes": 300,
            "snapshot_max_inflight": 2,
            **options,
        }
        self.actor = Replicator(
            PEER, LEADER, TERM, next_index, self.log_view, self.transport, self.ballot_box,
            self.node, self.clock, RaftOptions(**opts),
            snapshots=self.snapshots if snapshots else None,
        )  # fmt: skip
        self.harness = ActorHarness(self.actor, self.clock)

    def sent(self) -> list[Any]:
        taken = self.transport.take()
        assert all(to == PEER for to, _ in taken)
        return [message for _, message in taken]

    def chunks(self) -> list[InstallSnapshotRequest]:
        """The chunks sent since the last call. Anything else sent must be a heartbeat, as
        sent during a transfer (an empty AppendEntries at index 0)."""
        chunks: list[InstallSnapshotRequest] = []
        for message in self.sent():
            if isinstance(message, InstallSnapshotRequest):
                chunks.append(message)
            else:
                assert message == AppendEntriesRequest(TERM, LEADER, 0, 0, (), 0, message.seq)
        return chunks

    def send(self, *messages: object) -> None:
        for message in messages:
            self.harness.send(message)

    def grants(self) -> list[int]:
        return [g.last_index for g in self.ballot_box.take(Grant)]

    @property
    def state(self) -> ReplicatorState:
        return self.actor.progress.state


def held(req: InstallSnapshotRequest, next_offset: int | None = None) -> InstallSnapshotResponse:
    """The follower's answer to a chunk: it holds `next_offset` bytes (default: up to its end)."""
    end = req.offset + len(req.data)
    return InstallSnapshotResponse(
        TERM, True, PEER, req.seq, TERM, req.last_included_index,
        end if next_offset is None else next_offset, False,
    )  # fmt: skip


def installed(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
    return InstallSnapshotResponse(
        TERM, True, PEER, req.seq, TERM, req.last_included_index, req.size, True
    )


def refused(req: InstallSnapshotRequest) -> InstallSnapshotResponse:
    return InstallSnapshotResponse(
        TERM, False, PEER, req.seq, TERM, req.last_included_index, 0, False
    )


def spans(chunks: Sequence[InstallSnapshotRequest]) -> list[tuple[int, int, int, bool]]:
    """(seq, offset, data length, done) of each chunk."""
    return [(c.seq, c.offset, len(c.data), c.done) for c in chunks]


def ok(req: AppendEntriesRequest, last: int | None = None) -> AppendEntriesResponse:
    end = req.prev_log_index + len(req.entries)
    return AppendEntriesResponse(TERM, True, end if last is None else last, PEER, req.seq, TERM)


# -- starting a transfer ---------------------------------------------------------------------


def test_a_compacted_next_index_starts_a_transfer_of_the_snapshot() -> None:
    rep = Rep(next_index=5)  # entries 4 and 5 are gone: no probe can be built
    first, second = rep.chunks()  # snapshot_max_inflight 2
    assert first == InstallSnapshotRequest(
        term=TERM,
        leader_id=LEADER,
        last_included_index=SNAP_INDEX,
        last_included_term=SNAP_TERM,
        conf=CONF,
        size=1000,
        checksum=zlib.crc32(DATA),
        offset=0,
        data=DATA[:300],
        done=False,
        seq=1,
    )
    assert (second.offset, second.data, second.seq, second.done) == (300, DATA[300:600], 2, False)
    assert (rep.meta.size, rep.meta.checksum) == (1000, zlib.crc32(DATA))
    assert rep.state is ReplicatorState.SNAPSHOT
    assert str(rep.actor) == "SNAPSHOT next=5 match=0 inflight=0 snapshot 10 0% of 1000 bytes"
    assert rep.ballot_box.told == [] and rep.node.told == []


def test_a_probe_refused_below_the_first_index_starts_a_transfer() -> None:
    # SOFAJRaft's fillCommonFields case: the probe at 11 (prev 10, the snapshot's own entry,
    # whose term is known) is refused by a follower holding only 1..3; the next probe would need
    # the term of entry 3, which was compacted away.
    rep = Rep(next_index=11)
    [probe] = rep.sent()
    assert probe == AppendEntriesRequest(TERM, LEADER, 10, 2, (), 15, 1)
    rep.send(AppendEntriesResponse(TERM, False, 3, PEER, probe.seq, TERM))
    assert spans(rep.chunks()) == [(2, 0, 300, False), (3, 300, 300, False)]
    assert rep.state is ReplicatorState.SNAPSHOT


def test_entries_compacted_while_replicating_start_a_transfer_of_the_newest_snapshot() -> None:
    rep = Rep(next_index=12)
    [probe] = rep.sent()
    rep.send(ok(probe))  # matched at 11: REPLICATE from 12
    rep.grants()
    [r1, r2, r3] = rep.sent()
    assert rep.state is ReplicatorState.REPLICATE
    newer = commit_snapshot(rep.snapshots, 18, b"n" * 450)
    rep.log_view.compact(newer, 19)  # the follower is now too far behind for entries 16..
    rep.send(ok(r1))  # 12..13 acked; the pipeline would go on at 18, which has gone
    assert rep.grants() == [13]
    chunks = rep.chunks()
    assert [(c.last_included_index, c.last_included_term) for c in chunks] == [(18, 3), (18, 3)]
    assert spans(chunks) == [(5, 0, 300, False), (6, 300, 150, True)]
    # The entries in flight are forgotten: they are in the snapshot (committed, then applied).
    rep.send(ok(r2), ok(r3))
    assert rep.grants() == [] and rep.chunks() == []
    assert rep.state is ReplicatorState.SNAPSHOT


def test_without_a_snapshot_a_compacted_follower_blocks() -> None:
    rep = Rep(next_index=5, snapshots=False, block_interval=0.25)
    assert rep.sent() == []
    assert rep.actor.blocked and rep.state is ReplicatorState.PROBE
    rep.harness.advance(0.25)  # unblocked: still nothing it can send, blocked again
    assert rep.sent() == [] and rep.actor.blocked


# -- the chunk window ------------------------------------------------------------------------


def test_responses_advance_the_window_up_to_the_final_chunk() -> None:
    rep = Rep(next_index=5)
    c1, c2 = rep.chunks()
    rep.send(held(c1))
    [c3] = rep.chunks()
    assert spans([c3]) == [(3, 600, 300, False)]
    assert str(rep.actor) == "SNAPSHOT next=5 match=0 inflight=0 snapshot 10 30% of 1000 bytes"
    rep.send(held(c2))
    [c4] = rep.chunks()
    assert spans([c4]) == [(4, 900, 100, True)]
    assert c4.data == DATA[900:]
    rep.send(held(c3))
    assert rep.chunks() == []  # the final chunk is in flight: nothing more to send
    assert str(rep.actor).endswith("snapshot 10 90% of 1000 bytes")
    assert rep.ballot_box.told == []


def test_a_snapshot_of_a_whole_number_of_chunks_ends_with_a_full_final_chunk() -> None:
    rep = Rep(next_index=5, data=DATA[:600])
    c1, c2 = rep.chunks()
    assert spans([c1, c2]) == [(1, 0, 300, False), (2, 300, 300, True)]
    rep.send(held(c1))
    assert rep.chunks() == []


def test_installed_grants_the_snapshot_index_and_probes_right_after_it() -> None:
    rep = Rep(next_index=5, snapshot_max_inflight=4)
    chunks = rep.chunks()
    assert [c.done for c in chunks] == [False, False, False, True]
    rep.send(held(chunks[0]), held(chunks[1]), held(chunks[2]))
    assert rep.ballot_box.told == []
    rep.send(installed(chunks[3]))
    assert rep.ballot_box.take() == [Grant(PEER, SNAP_INDEX, TERM)]
    assert rep.actor.transfer is None
    assert rep.state is ReplicatorState.PROBE
    assert (rep.actor.progress.next_index, rep.actor.progress.match_index) == (11, 10)
    [probe] = rep.sent()
    assert probe == AppendEntriesRequest(TERM, LEADER, SNAP_INDEX, SNAP_TERM, (), 15, 5)
    rep.send(ok(probe))  # the follower continues the snapshot: replicate from 11
    assert rep.state is ReplicatorState.REPLICATE
    assert [(r.prev_log_index, len(r.entries)) for r in rep.sent()] == [(10, 2), (12, 2), (14, 2)]


def test_a_covered_answer_to_any_chunk_ends_the_transfer() -> None:
    # A follower whose log is committed past the snapshot answers installed at once.
    rep = Rep(next_index=5)
    c1, _ = rep.chunks()
    rep.send(installed(c1))
    assert rep.grants() == [SNAP_INDEX]
    [probe] = rep.sent()
    assert (probe.prev_log_index, probe.prev_log_term) == (SNAP_INDEX, SNAP_TERM)


def test_a_lower_next_offset_rewinds_and_earlier_seqs_become_stale() -> None:
    rep = Rep(next_index=5)
    c1, c2 = rep.chunks()
    # c1 was lost: the follower got c2 while holding nothing.
    rep.send(held(c2, next_offset=0))
    assert spans(rep.chunks()) == [(3, 0, 300, False), (4, 300, 300, False)]
    rep.send(held(c1), held(c2))  # late answers of the old stream: stale
    assert rep.chunks() == []
    assert rep.actor.transfer is not None and rep.actor.transfer.acked == 0


def test_a_gap_rewinds_to_what_the_follower_holds() -> None:
    rep = Rep(next_index=5)
    c1, c2 = rep.chunks()
    rep.send(held(c1))
    [c3] = rep.chunks()
    # c2 was lost: c3 (offset 600) finds the follower holding 300.
    rep.send(held(c3, next_offset=300))
    assert spans(rep.chunks()) == [(4, 300, 300, False), (5, 600, 300, False)]
    rep.send(held(c2))  # c2's answer came late: it was dropped from the window
    assert rep.chunks() == []


def test_a_follower_that_lost_its_download_gets_the_snapshot_from_the_start() -> None:
    rep = Rep(next_index=5)
    c1, c2 = rep.chunks()
    rep.send(held(c1), held(c2))
    c3, _ = rep.chunks()  # 600..1000
    # The follower restarted: its download is gone, and it asks for the start.
    rep.send(held(c3, next_offset=0))
    assert [c.offset for c in rep.chunks()] == [0, 300]


def test_a_refusal_ends_the_transfer_blocks_then_probes_again() -> None:
    rep = Rep(next_index=5, block_interval=0.25)
    c1, _ = rep.chunks()
    rep.send(refused(c1))  # e.g. its checksum did not match
    assert rep.actor.transfer is None
    assert rep.actor.blocked and rep.state is ReplicatorState.PROBE
    assert "blocked" in str(rep.actor)
    assert rep.grants() == [] and rep.sent() == []
    rep.harness.advance(0.2)
    assert rep.sent() == []  # blocked: not even a heartbeat
    rep.harness.advance(0.05)  # Unblock: the probe needs entry 4, compacted: a new transfer
    assert spans(rep.chunks()) == [(3, 0, 300, False), (4, 300, 300, False)]
    assert rep.state is ReplicatorState.SNAPSHOT and not rep.actor.blocked


def test_a_higher_term_in_an_answer_stops_everything() -> None:
    rep = Rep(next_index=5)
    c1, _ = rep.chunks()
    rep.send(InstallSnapshotResponse(TERM + 2, False, PEER, c1.seq, TERM, SNAP_INDEX, 0, False))
    assert rep.node.take() == [HigherTermSeen(TERM + 2, PEER)]
    assert rep.actor.stopped and rep.actor.transfer is None
    rep.harness.advance(2.0)
    assert rep.sent() == [] and rep.node.told == []
    assert rep.clock.pending() == 0


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"req_term": TERM - 1}, id="an earlier term's"),
        pytest.param({"last_included_index": 7}, id="about another snapshot"),
        pytest.param({"peer_id": "c"}, id="from another peer"),
        pytest.param({"seq": 99}, id="an unknown seq"),
    ],
)
def test_answers_that_are_not_about_this_transfer_are_ignored(answer: dict[str, Any]) -> None:
    rep = Rep(next_index=5)
    c1, _ = rep.chunks()
    fields = {
        "term": TERM, "success": True, "peer_id": PEER, "seq": c1.seq, "req_term": TERM,
        "last_included_index": SNAP_INDEX, "next_offset": 1000, "done": True, **answer,
    }  # fmt: skip
    rep.send(InstallSnapshotResponse(**fields))
    assert rep.sent() == [] and rep.ballot_box.told == []
    assert rep.state is ReplicatorState.SNAPSHOT


def test_log_appended_during_a_transfer_sends_no_entries() -> None:
    rep = Rep(next_index=5)
    rep.chunks()
    rep.log_view.append_unstable([entry(21, TERM)])
    rep.send(LogAppended(21))
    assert rep.sent() == []


# -- heartbeats and timeouts during a transfer -----------------------------------------------


def test_heartbeats_go_on_at_index_zero_and_their_answers_leave_the_transfer_alone() -> None:
    rep = Rep(next_index=5)
    c1, c2 = rep.chunks()
    rep.harness.advance(HEARTBEAT)
    [beat] = rep.sent()
    assert beat == AppendEntriesRequest(TERM, LEADER, 0, 0, (), 0, 3)
    rep.send(ok(beat, last=3))  # the follower's log ends at 3; still "success" at index 0
    rep.send(AppendEntriesResponse(TERM, False, 3, PEER, beat.seq, TERM))  # even a refusal
    assert rep.sent() == [] and rep.ballot_box.told == []
    assert rep.state is ReplicatorState.SNAPSHOT
    assert rep.actor.transfer is not None
    assert [c.seq for c in rep.actor.transfer.inflight] == [c1.seq, c2.seq]
    rep.send(held(c1))  # the transfer goes on where it was
    assert spans(rep.chunks()) == [(4, 600, 300, False)]
    rep.harness.advance(HEARTBEAT)
    [contact] = rep.node.take(PeerContact)
    assert contact.peer_id == PEER and "SNAPSHOT" in contact.state and "30%" in contact.state


def test_an_overdue_chunk_is_resent_from_what_was_acked_on_a_heartbeat() -> None:
    rep = Rep(next_index=5, rpc_timeout=0.35)
    c1, c2 = rep.chunks()  # at t=0
    rep.harness.advance(0.05)
    rep.send(held(c1))  # acked 300
    [c3] = rep.chunks()  # at t=0.05
    rep.harness.advance(0.3)  # ticks at 0.1 .. 0.3: c2 is not yet 0.35 old
    beats = rep.sent()
    assert all(isinstance(m, AppendEntriesRequest) for m in beats)
    rep.send(ok(beats[-1], last=3))  # it is alive: it answers heartbeats, not chunks
    rep.harness.advance(0.1)  # the tick at 0.4 finds c2 0.4 old: resend from 300
    sent = rep.sent()
    assert isinstance(sent[0], AppendEntriesRequest)  # the heartbeat first
    assert [(c.offset, c.done) for c in sent[1:]] == [(300, False), (600, False)]
    rep.send(held(c2), held(c3))  # the original answers: stale now
    assert rep.chunks() == []
    assert not rep.actor.blocked  # a slow transfer is not an RPC failure


# -- throttle --------------------------------------------------------------------------------


class TimedTransport(RecordingTransport):
    """Records when each chunk left, by the replicator's clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(LEADER)
        self.clock = clock
        self.chunk_times: list[tuple[float, int]] = []

    def send(self, to: str, message: RpcMessage) -> None:
        if isinstance(message, InstallSnapshotRequest):
            self.chunk_times.append((round(self.clock.now(), 6), message.offset))
        super().send(to, message)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        # 300-byte chunks, then the last 100 bytes; the bucket holds one chunk at most.
        pytest.param(300, [(0.0, 0), (1.0, 300), (2.0, 600), (2.333333, 900)], id="300 B/s"),
        pytest.param(600, [(0.0, 0), (0.5, 300), (1.0, 600), (1.166667, 900)], id="600 B/s"),
        pytest.param(0, [(0.0, 0), (0.0, 300), (0.0, 600), (0.0, 900)], id="unthrottled"),
    ],
)
def test_the_throttle_sends_only_what_the_rate_allows(
    rate: int, expected: list[tuple[float, int]]
) -> None:
    clock = ManualClock()
    transport = TimedTransport(clock)
    rep = Rep(
        next_index=5,
        transport=transport,
        clock=clock,
        snapshot_throttle_bytes=rate,
        snapshot_max_inflight=8,  # the window is not the limit here
        rpc_timeout=10.0,  # nor the timeout
    )
    rep.harness.advance(3.5)
    assert transport.chunk_times == expected


def test_chunk_tick_resumes_a_throttled_transfer_and_a_stale_one_is_ignored() -> None:
    rep = Rep(next_index=5, snapshot_throttle_bytes=300, snapshot_max_inflight=8, rpc_timeout=10.0)
    assert [c.offset for c in rep.chunks()] == [0]
    rep.harness.advance(0.9)
    assert rep.chunks() == []
    rep.send(ChunkTick(0))  # an old generation: not the throttle's timer
    assert rep.chunks() == []
    rep.harness.advance(0.1)
    assert [c.offset for c in rep.chunks()] == [300]


def test_the_throttle_holds_across_answers() -> None:
    # Answers free window slots, but not bandwidth: at 300 bytes/s, 3 chunks by t=2.
    rep = Rep(next_index=5, snapshot_throttle_bytes=300, rpc_timeout=10.0)
    sent = rep.chunks()
    for _ in range(20):
        rep.harness.advance(0.1)
        rep.sent()  # heartbeats
        for c in sent:
            rep.send(held(c))
        sent = rep.chunks()
    assert rep.actor.transfer is not None
    assert rep.actor.transfer.next_offset == 900  # 0, 300 at t=1, 600 at t=2


def test_a_failed_chunk_send_ends_the_transfer_and_blocks_without_a_retry_loop() -> None:
    class Failing(RecordingTransport):
        attempts = 0

        def send(self, to: str, message: RpcMessage) -> None:
            self.attempts += 1
            raise OSError("down")

    failing = Failing(LEADER)
    rep = Rep(next_index=5, transport=failing, block_interval=0.25)
    assert failing.attempts == 1  # the first chunk; nothing more
    assert rep.actor.blocked and rep.actor.transfer is None
    assert rep.state is ReplicatorState.PROBE
    rep.harness.advance(0.2)
    assert failing.attempts == 1
    rep.actor.transport = rep.transport = RecordingTransport(LEADER)
    rep.harness.advance(0.05)  # unblocked: the transfer starts over
    assert [c.offset for c in rep.chunks()] == [0, 300]


def test_a_follower_that_goes_silent_gets_no_more_chunks_until_it_answers() -> None:
    rep = Rep(next_index=5, rpc_timeout=0.35, block_interval=0.2)
    c1, _ = rep.chunks()
    rep.send(held(c1))  # t=0: acked 300; then the follower dies
    rep.harness.advance(0.4)  # the tick at 0.4: nothing answered for 0.4 s
    assert rep.actor.transfer is None and rep.actor.blocked
    rep.sent()
    rep.harness.advance(1.0)  # unblocked every 0.2 s: a heartbeat at 0 each time, no chunk
    probes = rep.sent()
    assert probes and all(
        m == AppendEntriesRequest(TERM, LEADER, 0, 0, (), 0, m.seq) for m in probes
    )
    rep.send(ok(probes[-1], last=0))  # it is back (with its download, at 300)
    rep.harness.advance(0.2)  # the next unblock starts the transfer again
    [first, second] = rep.chunks()
    assert (first.offset, second.offset) == (0, 300)
    rep.send(held(first, next_offset=300))  # it says it holds 300 bytes already: resume there
    assert [c.offset for c in rep.chunks()] == [600]
