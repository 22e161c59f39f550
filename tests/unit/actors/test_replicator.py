"""Replicator: probe, pipeline, in-order responses, back-off, blocking, heartbeats. Each test reads
as a transcript: what the leader sent, what the follower answered, what was told."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from actors.clock import ManualClock
from actors.log_view import LogView
from actors.messages import (
    ConfirmLeadership,
    Grant,
    HigherTermSeen,
    LeadershipAck,
    LogAppended,
    PeerContact,
)
from actors.metrics import RaftMetrics
from actors.options import RaftOptions
from actors.replicator import Replicator, ReplicatorState
from actors.testing import ActorHarness, RecordingMailbox, RecordingTransport
from storage.entry import EntryType, LogEntry
from storage.memory import MemoryLogStorage
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse, RpcMessage

PEER, LEADER, TERM = "b", "a", 3
HEARTBEAT = 0.1  # election_timeout 1.0 / heartbeat_ratio 10


def entry(index: int, term: int, size: int = 1) -> LogEntry:
    return LogEntry(index, term, EntryType.DATA, b"x" * size)


class Rep:
    """A Replicator for follower "b" in term 3, on the test thread, with recording neighbours."""

    def __init__(
        self,
        terms: Sequence[int],
        next_index: int,
        committed: int = 0,
        size: int = 1,
        **options: Any,
    ) -> None:
        storage = MemoryLogStorage()
        storage.append_entries([entry(i, t, size) for i, t in enumerate(terms, start=1)])
        self.log_view = LogView(storage)
        self.log_view.set_committed(committed)
        self.clock = ManualClock()
        self.transport = RecordingTransport(LEADER)
        self.ballot_box = RecordingMailbox("ballot_box")
        self.node = RecordingMailbox("node")
        self.metrics = RaftMetrics()
        opts = {"max_inflight": 3, "max_entries_per_request": 2, **options}
        self.actor = Replicator(
            PEER, LEADER, TERM, next_index, self.log_view, self.transport, self.ballot_box,
            self.node, self.clock, RaftOptions(**opts), metrics=self.metrics,
        )  # fmt: skip
        self.harness = ActorHarness(self.actor, self.clock)

    def sent(self) -> list[AppendEntriesRequest]:
        taken = self.transport.take()
        assert all(to == PEER for to, _ in taken)
        return [message for _, message in taken]

    def send(self, *messages: object) -> None:
        for message in messages:
            self.harness.send(message)

    def append(self, *terms: int) -> None:
        first = self.log_view.last_index + 1
        self.log_view.append_unstable([entry(first + n, t) for n, t in enumerate(terms)])
        self.harness.send(LogAppended(self.log_view.last_index))

    def grants(self) -> list[int]:
        return [g.last_index for g in self.ballot_box.take(Grant)]


def ok(req: AppendEntriesRequest, last: int | None = None) -> AppendEntriesResponse:
    end = req.prev_log_index + len(req.entries)
    return AppendEntriesResponse(TERM, True, end if last is None else last, PEER, req.seq, TERM)


def reject(req: AppendEntriesRequest, last: int) -> AppendEntriesResponse:
    return AppendEntriesResponse(TERM, False, last, PEER, req.seq, TERM)


def spans(requests: Sequence[AppendEntriesRequest]) -> list[tuple[int, int, int]]:
    """(seq, prev_log_index, entry count) of each request."""
    return [(r.seq, r.prev_log_index, len(r.entries)) for r in requests]


def test_probe_then_replicate() -> None:
    # Reference: Raft paper §5.3. The leader starts at its last index + 1 and probes.
    rep = Rep([1, 1, 2, 2, 3], next_index=6, committed=3)
    [probe] = rep.sent()
    assert probe == AppendEntriesRequest(TERM, LEADER, 5, 3, (), 3, 1)
    assert str(rep.actor) == "PROBE next=6 match=0 inflight=1"
    rep.send(ok(probe))
    assert rep.actor.progress.state is ReplicatorState.REPLICATE
    assert str(rep.actor) == "REPLICATE next=6 match=5 inflight=0"
    assert rep.ballot_box.take() == [Grant(PEER, 5, TERM)]
    assert rep.sent() == []  # nothing new
    rep.append(3, 3)
    [request] = rep.sent()
    assert request == AppendEntriesRequest(TERM, LEADER, 5, 3, (entry(6, 3), entry(7, 3)), 3, 2)
    rep.send(ok(request))
    assert rep.ballot_box.take() == [Grant(PEER, 7, TERM)]


def test_probe_carries_no_entries_and_only_one_is_in_flight() -> None:
    rep = Rep([1] * 10, next_index=4)
    assert spans(rep.sent()) == [(1, 3, 0)]
    rep.append(1)  # a PROBE replicator does not send on LogAppended
    rep.harness.advance(HEARTBEAT * 3)  # nor on heartbeats while its probe is in flight
    assert rep.sent() == []


def test_pipeline_respects_entry_count_and_inflight_limits() -> None:
    rep = Rep([1] * 10, next_index=1)
    rep.send(ok(*rep.sent()))
    first = rep.sent()
    assert spans(first) == [(2, 0, 2), (3, 2, 2), (4, 4, 2)]  # max_inflight 3, 2 entries each
    assert [e.index for e in first[1].entries] == [3, 4]
    rep.send(ok(first[0]))
    assert rep.grants() == [2]
    assert spans(rep.sent()) == [(5, 6, 2)]
    rep.send(ok(first[1]), ok(first[2]))
    assert rep.grants() == [4, 6]
    assert spans(rep.sent()) == [(6, 8, 2)]
    assert rep.actor.progress.next_index == 11


def test_pipeline_respects_body_bytes() -> None:
    # 10-byte entries, 25 bytes per request: two entries fit, a third would not.
    rep = Rep([1] * 5, next_index=1, size=10, max_entries_per_request=4, max_body_bytes=25)
    rep.send(ok(*rep.sent()))
    assert spans(rep.sent()) == [(2, 0, 2), (3, 2, 2), (4, 4, 1)]


def test_out_of_order_responses_are_held_and_applied_in_order() -> None:
    rep = Rep([1] * 6, next_index=1)
    rep.send(ok(*rep.sent()))
    r1, r2, r3 = rep.sent()
    rep.send(ok(r3), ok(r2))
    assert rep.ballot_box.told == []  # waiting for r1
    assert set(rep.actor.progress.held) == {r2.seq, r3.seq}
    rep.send(ok(r1))
    assert rep.grants() == [2, 4, 6]
    assert rep.actor.progress.held == {}
    assert str(rep.actor) == "REPLICATE next=7 match=6 inflight=0"


def test_stale_responses_are_ignored() -> None:
    rep = Rep([1] * 6, next_index=1)
    [probe] = rep.sent()
    old_term = AppendEntriesResponse(TERM, True, 0, PEER, probe.seq, TERM - 1)
    unknown_seq = AppendEntriesResponse(TERM, True, 0, PEER, 99, TERM)
    rep.send(old_term, unknown_seq)
    assert rep.ballot_box.told == [] and rep.sent() == []
    assert rep.actor.progress.state is ReplicatorState.PROBE
    rep.send(ok(probe))
    r1, r2, r3 = rep.sent()
    rep.send(reject(r1, last=0))  # mismatch: the pipeline is reset, r2 and r3 are forgotten
    [probe2] = rep.sent()
    rep.send(ok(r2), ok(r3))  # responses of the old pipeline: stale
    assert rep.ballot_box.told == [] and rep.sent() == []
    assert spans([probe2]) == [(5, 0, 0)]


def test_mismatch_jumps_back_to_the_followers_last_index() -> None:
    # Reference: Raft paper §5.3, the optimisation of backing off past a short follower log.
    rep = Rep([1, 1, 2, 2, 3, 3], next_index=7)
    [probe] = rep.sent()
    rep.send(reject(probe, last=2))
    [probe] = rep.sent()
    assert (probe.prev_log_index, probe.prev_log_term) == (2, 1)
    assert str(rep.actor) == "PROBE next=3 match=0 inflight=1"


def test_mismatch_steps_back_one_when_the_follower_log_is_long() -> None:
    rep = Rep([1, 1, 2, 2, 3, 3], next_index=7)
    [probe] = rep.sent()
    rep.send(reject(probe, last=9))  # conflicting longer log: step back one
    [probe] = rep.sent()
    assert probe.prev_log_index == 5
    rep.send(reject(probe, last=9))
    [probe] = rep.sent()
    assert (probe.prev_log_index, probe.prev_log_term) == (4, 2)
    rep.send(ok(probe))
    assert rep.grants() == [4]
    assert spans(rep.sent()) == [(4, 4, 2)]


def test_back_off_never_goes_below_the_first_index() -> None:
    rep = Rep([1, 1], next_index=1)
    [probe] = rep.sent()
    rep.send(reject(probe, last=0))  # nonsense from the follower; stay at 1
    assert rep.sent()[0].prev_log_index == 0


def test_mismatch_in_the_pipeline_resets_to_probe_never_below_the_acknowledged() -> None:
    rep = Rep([1] * 6, next_index=1)
    rep.send(ok(*rep.sent()))
    r1, r2, _ = rep.sent()
    # r2 was refused before r1 reached the follower (reordered on the way); r1 then repaired
    # the follower up to 2, durably. The refusal must not send the leader back below that.
    rep.send(ok(r1), reject(r2, last=9))
    assert rep.grants() == [2]
    [probe] = rep.sent()
    assert probe.prev_log_index == 2 and probe.entries == ()
    assert rep.actor.progress.state is ReplicatorState.PROBE


def test_refused_probe_at_the_acknowledged_index_repairs_from_the_follower_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rep = Rep([1] * 6, next_index=1)
    rep.send(ok(*rep.sent()))
    r1, r2, _ = rep.sent()
    rep.send(ok(r1), reject(r2, last=9))
    [probe] = rep.sent()
    with caplog.at_level(logging.ERROR):
        rep.send(reject(probe, last=1))  # a follower that lost what it acknowledged (bad disk)
    assert "lost acknowledged entries" in caplog.text
    assert rep.sent()[0].prev_log_index == 1


def test_success_that_does_not_cover_what_was_sent_resets_to_probe() -> None:
    rep = Rep([1] * 4, next_index=1)
    rep.send(ok(*rep.sent()))
    r1, _ = rep.sent()
    rep.send(ok(r1, last=1))  # "success", yet it holds only entry 1 of 1..2
    assert rep.grants() == []
    [probe] = rep.sent()
    assert probe.prev_log_index == 1


def test_higher_term_tells_the_node_and_stops_sending() -> None:
    rep = Rep([1] * 4, next_index=5)
    [probe] = rep.sent()
    rep.send(AppendEntriesResponse(TERM + 2, False, 0, PEER, probe.seq, TERM))
    assert rep.node.take() == [HigherTermSeen(TERM + 2, PEER)]
    rep.append(1)
    rep.harness.advance(2.0)
    assert rep.sent() == [] and rep.node.told == []
    assert rep.clock.pending() == 0


def test_rpc_timeout_blocks_then_probes_again() -> None:
    rep = Rep([1] * 4, next_index=5, rpc_timeout=0.35, block_interval=0.25)
    assert len(rep.sent()) == 1  # the probe, at t=0
    rep.harness.advance(0.4)  # the tick at 0.4 finds it 0.4 old
    assert rep.actor.blocked
    assert str(rep.actor) == "PROBE next=5 match=0 inflight=0 blocked"
    rep.harness.advance(0.2)  # t=0.6: still blocked, ticks send nothing
    assert rep.sent() == []
    rep.harness.advance(0.1)  # unblocked at 0.65
    assert spans(rep.sent()) == [(2, 4, 0)]
    assert not rep.actor.blocked


def test_timeout_in_replicate_resumes_at_the_oldest_unacknowledged_entry() -> None:
    rep = Rep([1] * 6, next_index=1, rpc_timeout=0.35, block_interval=0.25)
    rep.send(ok(*rep.sent()))
    r1, r2, _ = rep.sent()
    rep.send(ok(r1))
    assert rep.grants() == [2]
    rep.harness.advance(0.7)  # r2 times out at the 0.4 tick; unblocked at 0.65
    [probe] = rep.sent()
    assert spans([probe]) == [(5, 2, 0)]
    rep.send(ok(r2))  # a response of the old pipeline: stale
    assert rep.sent() == [] and rep.grants() == []
    rep.send(ok(probe))
    assert spans(rep.sent()) == [(6, 2, 2), (7, 4, 2)]


def test_failed_send_blocks_without_a_retry_loop() -> None:
    class Failing(RecordingTransport):
        attempts = 0

        def send(self, to: str, message: RpcMessage) -> None:
            self.attempts += 1
            raise OSError("down")

    rep = Rep([1] * 2, next_index=3, block_interval=0.25)
    rep.send(ok(*rep.sent()))
    failing = Failing(LEADER)
    rep.actor.transport = failing
    rep.append(1)  # REPLICATE: this send fails
    assert rep.actor.blocked and failing.attempts == 1
    rep.harness.advance(0.2)  # blocked: the ticks at 0.1 and 0.2 try nothing
    assert failing.attempts == 1
    rep.actor.transport = rep.transport
    rep.harness.advance(0.1)  # unblocked at 0.25: probe from the unsent entry on
    assert spans(rep.sent()) == [(3, 2, 0)]


def test_heartbeats_only_when_the_pipeline_is_idle() -> None:
    rep = Rep([1, 2], next_index=3, committed=1)
    rep.send(ok(*rep.sent()))
    rep.harness.advance(HEARTBEAT)
    [beat] = rep.sent()
    assert beat == AppendEntriesRequest(TERM, LEADER, 2, 2, (), 1, 2)
    rep.harness.advance(HEARTBEAT)  # the heartbeat is still in flight: nothing more
    assert rep.sent() == []
    rep.send(ok(beat))
    rep.log_view.set_committed(2)
    rep.harness.advance(HEARTBEAT)
    [beat] = rep.sent()
    assert (beat.seq, beat.committed_index) == (3, 2)  # heartbeats carry the commit index
    assert rep.ballot_box.take() == [Grant(PEER, 2, TERM)]  # the probe's; heartbeats add none


def test_log_appended_wakes_a_replicating_replicator() -> None:
    rep = Rep([1], next_index=2)
    rep.send(ok(*rep.sent()))
    rep.append(1, 1, 1)
    assert spans(rep.sent()) == [(2, 1, 2), (3, 3, 1)]


def test_peer_contact_about_once_per_heartbeat() -> None:
    rep = Rep([1, 1], next_index=3)
    rep.harness.advance(0.05)
    rep.send(ok(*rep.sent()))
    rep.harness.advance(0.05)  # the tick at 0.1
    assert rep.node.take() == [
        PeerContact(PEER, TERM, 0.05, "REPLICATE next=3 match=2 inflight=0", 2, "replicate", 0, 0.0)
    ]
    rep.harness.advance(0.15)  # the 0.2 tick sends a heartbeat, nobody answers it
    assert rep.node.take() == []
    [beat] = rep.sent()
    rep.send(ok(beat))
    rep.harness.advance(0.1)
    [contact] = rep.node.take()
    assert contact.last_response_at == pytest.approx(0.25)


def test_stop_cancels_timers() -> None:
    rep = Rep([1], next_index=2)
    rep.sent()
    rep.harness.stop()
    rep.harness.advance(5.0)
    assert rep.sent() == [] and rep.clock.pending() == 0


# -- conflict hints: one round trip per conflicting term (Raft dissertation §5.3) --------------


class Follower:
    """A follower's log, answering probes as the LogManager does (with conflict hints)."""

    def __init__(self, terms: Sequence[int]) -> None:
        self.terms = list(terms)

    def answer(self, req: AppendEntriesRequest, hints: bool = True) -> AppendEntriesResponse:
        last, prev = len(self.terms), req.prev_log_index
        if prev > last:
            conflict = (0, last + 1)
        elif prev == 0 or self.terms[prev - 1] == req.prev_log_term:
            return ok(req, last=max(last, prev + len(req.entries)))
        else:
            term = self.terms[prev - 1]
            conflict = (term, self.terms.index(term) + 1)
        reply = reject(req, last)
        if not hints:
            return reply
        return dataclasses.replace(reply, conflict_term=conflict[0], conflict_index=conflict[1])


def probes_until_match(leader: Sequence[int], follower: Sequence[int], hints: bool) -> int:
    rep = Rep(leader, next_index=len(leader) + 1)
    other = Follower(follower)
    probes = 0
    while rep.actor.progress.state is ReplicatorState.PROBE:
        [probe] = rep.sent()
        probes += 1
        rep.send(other.answer(probe, hints))
    return probes


def test_a_long_divergent_suffix_converges_in_one_round_trip_per_term() -> None:
    """The leader has terms 1 x5 then 3 x15; the follower 1 x5 then 200 entries of term 2
    (a deposed leader's). Without hints the leader steps back one entry per round trip; with
    them it skips the follower's whole term 2 at once."""
    leader, follower = [1] * 5 + [3] * 15, [1] * 5 + [2] * 200
    assert probes_until_match(leader, follower, hints=True) == 2
    assert probes_until_match(leader, follower, hints=False) == 16


def test_a_conflicting_term_the_leader_also_has_resumes_after_its_last_entry_of_it() -> None:
    leader, follower = [1, 1, 2, 2, 4, 4], [1, 1, 2, 2, 2, 2, 3, 3]
    # Probe at 6 (term 4 vs the follower's 2) -> the leader's last entry of term 2 is 4 -> probe
    # at 4, which matches.
    assert probes_until_match(leader, follower, hints=True) == 2


# -- metrics ----------------------------------------------------------------------------------


def test_each_append_entries_with_entries_observes_its_size_in_entries_and_bytes() -> None:
    rep = Rep([1] * 5, next_index=1, size=100)
    rep.send(ok(*rep.sent()))  # the probe: no entries, not observed
    batches = rep.sent()
    assert spans(batches) == [(2, 0, 2), (3, 2, 2), (4, 4, 1)]
    rep.send(*map(ok, batches))
    rep.harness.advance(HEARTBEAT)
    assert spans(rep.sent()) == [(5, 5, 0)]  # a heartbeat: not observed either
    entries = rep.metrics.append_entries_entries.sample()
    assert entries.count == 3 and entries.sum == 5
    assert entries.buckets[:3] == (1, 3, 3)  # le 1, le 2, le 4
    sizes = rep.metrics.append_entries_bytes.sample()
    assert sizes.count == 3 and sizes.sum == 500
    assert sizes.buckets[:2] == (0, 3)  # le 64, le 256


def test_a_stopped_replicator_retires_its_cells_and_its_counts_stay() -> None:
    """One Replicator per follower per term: a new term's does not pile up cells."""
    rep = Rep([1] * 2, next_index=1)
    rep.send(ok(*rep.sent()))
    rep.harness.stop()
    family = rep.metrics.append_entries_entries
    assert family.sample().count == 1 and family._live == {(): []}


# -- read rounds ------------------------------------------------------------------------------


def test_a_read_round_is_acknowledged_only_by_an_answer_to_a_later_request() -> None:
    """The answer to a request sent before ConfirmLeadership proves nothing about now; the
    heartbeat sent for the round does."""
    rep = Rep([1, 1], next_index=3)
    [probe] = rep.sent()
    rep.send(ConfirmLeadership(TERM, 7))
    assert rep.sent() == []  # a probe is in flight: the next request goes when it can
    rep.send(ok(probe))
    assert rep.node.take(LeadershipAck) == []  # sent before the round
    [beat] = rep.sent()  # REPLICATE now: heartbeat for the round at once
    rep.send(ConfirmLeadership(TERM, 8))
    # Not behind `beat`: a heartbeat claims the follower holds everything sent before it.
    assert rep.sent() == []
    rep.send(ok(beat))
    assert rep.node.take(LeadershipAck) == []  # round 8 began after `beat` was sent
    [beat_8] = rep.sent()  # the pipeline is empty: now
    rep.send(ok(beat_8))
    assert rep.node.take(LeadershipAck) == [LeadershipAck(PEER, TERM, 8)]


def test_a_read_round_sends_a_heartbeat_at_once_and_reports_its_send_time() -> None:
    rep = Rep([1, 1], next_index=3)
    rep.send(ok(*rep.sent()))
    rep.harness.advance(0.03)
    rep.send(ConfirmLeadership(TERM, 1))
    [beat] = rep.sent()
    assert beat.entries == () and beat.seq == 2
    rep.harness.advance(0.01)
    rep.send(ok(beat))
    assert rep.node.take(LeadershipAck) == [LeadershipAck(PEER, TERM, 1)]
    assert rep.actor.acked_sent_at == pytest.approx(0.03)  # the lease runs from the send
    rep.send(ConfirmLeadership(TERM - 1, 2))  # another term's round: nothing
    assert rep.sent() == []
