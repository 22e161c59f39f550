"""Progress: the Replicator's rules as tables, without actors, clocks or a transport. Each row is
one case of a rule; its id says which."""

from __future__ import annotations

import pytest

from actors.progress import BackOff, Inflight, Placement, Progress, ReplicatorState

PROBE, REPLICATE = ReplicatorState.PROBE, ReplicatorState.REPLICATE
SNAPSHOT = ReplicatorState.SNAPSHOT


def progress(
    next_index: int,
    match_index: int = 0,
    state: ReplicatorState = PROBE,
) -> Progress[str]:
    """A Progress at the given point (held responses are plain strings here)."""
    p: Progress[str] = Progress(next_index)
    p.state, p.match_index = state, match_index
    return p


def sent(prev_log_index: int, count: int = 0, seq: int = 1) -> Inflight:
    return Inflight(seq, prev_log_index, count, 0.0)


# -- back-off (Raft §5.3: on a mismatch, decrement next_index and retry) ----------------------


@pytest.mark.parametrize(
    ("match", "request_", "success", "follower_last", "rule", "next_index"),
    [
        pytest.param(0, sent(5), False, 9, BackOff.STEP, 5, id="refused, longer log: step back"),
        pytest.param(0, sent(5), False, 5, BackOff.STEP, 5, id="refused, log reaches prev: step"),
        pytest.param(0, sent(6), False, 2, BackOff.JUMP, 3, id="refused, shorter log: jump"),
        pytest.param(0, sent(3), False, 0, BackOff.JUMP, 1, id="refused, empty log: jump to 1"),
        pytest.param(0, sent(4, 2), False, 9, BackOff.STEP, 4, id="refused entries: step"),
        pytest.param(2, sent(4), False, 9, BackOff.STEP, 4, id="above match: plain step"),
        pytest.param(0, sent(0, 2), True, 1, BackOff.SHORT, 2, id="short success: after its end"),
        pytest.param(0, sent(4, 2), True, 2, BackOff.SHORT, 3, id="short success below prev"),
        pytest.param(2, sent(2, 2), False, 9, BackOff.OVERTAKEN, 3, id="overtaken step"),
        pytest.param(4, sent(6, 2), False, 3, BackOff.OVERTAKEN, 5, id="overtaken jump"),
        pytest.param(4, sent(4, 2), True, 3, BackOff.OVERTAKEN, 5, id="overtaken short success"),
        pytest.param(4, sent(3, 1), False, 9, BackOff.OVERTAKEN, 5, id="overtaken, prev below"),
        pytest.param(2, sent(2), False, 1, BackOff.LOST_ACKED, 2, id="probe at match, short log"),
        pytest.param(2, sent(2), False, 9, BackOff.LOST_ACKED, 2, id="probe at match, long log"),
    ],
)
def test_back_off_rules(
    match: int,
    request_: Inflight,
    success: bool,
    follower_last: int,
    rule: BackOff,
    next_index: int,
) -> None:
    p = progress(request_.last_index + 1, match, REPLICATE)
    decision = p.back_off(request_, success, follower_last)
    assert (decision.rule, decision.next_index) == (rule, next_index)
    assert p.match_index == match  # a decision only: nothing changed yet


@pytest.mark.parametrize(
    ("match", "request_", "follower_last"),
    [
        pytest.param(2, sent(2, 2), 9, id="step to match"),
        pytest.param(5, sent(6, 2), 1, id="jump below match"),
        pytest.param(3, sent(3, 4), 0, id="entries at match refused"),
    ],
)
def test_a_refusal_overtaken_by_a_later_success_never_goes_below_match_plus_one(
    match: int, request_: Inflight, follower_last: int
) -> None:
    # Requests reordered on the way: the success of a later request was handled first, so the
    # follower durably holds 1..match. Backing off below that would re-send it all (seed 5).
    p = progress(request_.last_index + 1, match, REPLICATE)
    decision = p.back_off(request_, False, follower_last)
    assert decision.rule is BackOff.OVERTAKEN
    assert decision.next_index == match + 1
    p.become_probe(decision.next_index)
    assert p.next_index == match + 1 and p.match_index == match


def test_a_refused_probe_at_match_means_the_follower_lost_acknowledged_entries() -> None:
    # Only an empty request exactly at match_index: a refusal there cannot have been overtaken.
    p = progress(3, match_index=2)
    decision = p.back_off(sent(2), False, 0)
    assert (decision.rule, decision.next_index) == (BackOff.LOST_ACKED, 1)
    p.become_probe(decision.next_index)
    assert (p.next_index, p.match_index) == (1, 2)  # repair from the follower's real end
    assert str(p) == "PROBE next=1 match=2 inflight=0"


@pytest.mark.parametrize(
    ("request_", "success", "follower_last", "acknowledged"),
    [
        pytest.param(sent(5), True, 5, True, id="probe matched"),
        pytest.param(sent(5), True, 9, True, id="probe matched, follower log longer"),
        pytest.param(sent(2, 3), True, 5, True, id="entries covered"),
        pytest.param(sent(2, 3), True, 4, False, id="short success"),
        pytest.param(sent(5), False, 9, False, id="refused"),
        pytest.param(sent(5), False, 5, False, id="refused, even at the same length"),
    ],
)
def test_only_a_success_covering_everything_sent_acknowledges(
    request_: Inflight, success: bool, follower_last: int, acknowledged: bool
) -> None:
    assert request_.acknowledged_by(success, follower_last) is acknowledged


# -- state changes ---------------------------------------------------------------------------


def test_a_matching_probe_switches_probe_to_replicate() -> None:
    p = progress(6)
    probe = p.sent(1, 0, 0.0)
    assert probe == Inflight(1, 5, 0, 0.0)
    assert str(p) == "PROBE next=6 match=0 inflight=1"
    assert p.place(1) is Placement.IN_ORDER
    answered = p.pop_oldest()
    assert answered.acknowledged_by(True, 5)
    p.become_replicate()
    assert p.maybe_update(answered.last_index)
    assert p.state is REPLICATE
    assert str(p) == "REPLICATE next=6 match=5 inflight=0"


@pytest.mark.parametrize(
    ("next_index", "window", "reset_to", "expected"),
    [
        pytest.param(4, [], 0, 1, id="never below 1"),
        pytest.param(9, [], 2, 2, id="below a compacted prefix: the replicator's to handle"),
        pytest.param(9, [], 3, 3, id="to the given index"),
        pytest.param(7, [], None, 7, id="nothing in flight: stays"),
        pytest.param(3, [2, 2], None, 3, id="resume at the oldest unacknowledged"),
    ],
)
def test_become_probe_resets_the_pipeline_never_below_1(
    next_index: int, window: list[int], reset_to: int | None, expected: int
) -> None:
    p = progress(next_index, state=REPLICATE if window else PROBE)
    for seq, count in enumerate(window, start=1):
        p.sent(seq, count, 0.0)
    if len(window) > 1:
        p.hold(2, "early")
    p.become_probe(reset_to)
    assert p.next_index == expected
    assert p.state is PROBE and not p.inflight and not p.held


@pytest.mark.parametrize(("next_index", "expected"), [(0, 1), (6, 6)])
def test_a_new_progress_starts_probing_at_or_after_1(next_index: int, expected: int) -> None:
    p = progress(next_index)
    assert (p.state, p.next_index, p.match_index) == (PROBE, expected, 0)


def test_snapshot_state_forgets_the_pipeline_and_sends_no_entries() -> None:
    p = progress(5, state=REPLICATE)
    p.sent(1, 2, 0.0)
    p.sent(2, 2, 0.0)
    p.hold(2, "early")
    p.become_snapshot()
    assert p.state is SNAPSHOT and not p.inflight and not p.held
    assert not p.can_send(10)
    assert p.place(1) is Placement.STALE


@pytest.mark.parametrize(
    ("match", "installed", "grew", "after_match"),
    [
        pytest.param(0, 100, True, 100, id="grows to the snapshot"),
        pytest.param(120, 100, False, 120, id="an older snapshot never lowers match"),
    ],
)
def test_an_installed_snapshot_probes_right_after_what_the_follower_holds(
    match: int, installed: int, grew: bool, after_match: int
) -> None:
    p = progress(3, match)
    p.become_snapshot()
    assert p.snapshot_installed(installed) is grew
    assert (p.state, p.match_index, p.next_index) == (PROBE, after_match, after_match + 1)


@pytest.mark.parametrize(
    ("match", "acked", "grew", "after"),
    [
        pytest.param(0, 5, True, 5, id="grows"),
        pytest.param(5, 6, True, 6, id="grows by one"),
        pytest.param(5, 5, False, 5, id="same: no change"),
        pytest.param(5, 3, False, 5, id="lower: never shrinks"),
        pytest.param(5, 0, False, 5, id="a heartbeat at 0: never shrinks"),
    ],
)
def test_match_index_only_grows(match: int, acked: int, grew: bool, after: int) -> None:
    p = progress(10, match, REPLICATE)
    assert p.maybe_update(acked) is grew
    assert p.match_index == after


# -- the in-flight window --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "in_flight", "max_inflight", "can_send"),
    [
        pytest.param(PROBE, 0, 3, False, id="probe sends no entries"),
        pytest.param(REPLICATE, 0, 3, True, id="empty window"),
        pytest.param(REPLICATE, 2, 3, True, id="room for one more"),
        pytest.param(REPLICATE, 3, 3, False, id="window full"),
        pytest.param(REPLICATE, 1, 1, False, id="window of one, full"),
    ],
)
def test_window_full_or_not(
    state: ReplicatorState, in_flight: int, max_inflight: int, can_send: bool
) -> None:
    p = progress(1, state=REPLICATE)
    for seq in range(1, in_flight + 1):
        p.sent(seq, 1, 0.0)
    p.state = state
    assert p.can_send(max_inflight) is can_send


def test_sending_advances_next_index_optimistically() -> None:
    p = progress(3, match_index=2, state=REPLICATE)
    assert p.sent(7, 2, 0.5) == Inflight(7, 2, 2, 0.5)
    assert p.sent(8, 3, 0.6) == Inflight(8, 4, 3, 0.6)
    assert p.sent(9, 0, 0.7) == Inflight(9, 7, 0, 0.7)  # a heartbeat: nothing new
    assert str(p) == "REPLICATE next=8 match=2 inflight=3"


@pytest.mark.parametrize(
    ("window", "seq", "placement"),
    [
        pytest.param([], 1, Placement.STALE, id="nothing in flight"),
        pytest.param([4, 5, 6], 3, Placement.STALE, id="before the window: reset pipeline"),
        pytest.param([4, 5, 6], 7, Placement.STALE, id="after the window"),
        pytest.param([4, 5, 6], 4, Placement.IN_ORDER, id="the oldest"),
        pytest.param([4, 5, 6], 5, Placement.EARLY, id="behind the oldest"),
        pytest.param([4, 5, 6], 6, Placement.EARLY, id="the newest"),
        pytest.param([4], 4, Placement.IN_ORDER, id="the only one"),
    ],
)
def test_placement_of_a_response_seq(window: list[int], seq: int, placement: Placement) -> None:
    p = progress(1, state=REPLICATE)
    for window_seq in window:
        p.sent(window_seq, 1, 0.0)
    assert p.place(seq) is placement


def test_held_responses_come_out_in_the_order_sent() -> None:
    p = progress(1, state=REPLICATE)
    for seq in (1, 2, 3):
        p.sent(seq, 1, 0.0)
    p.hold(3, "r3")
    p.hold(2, "r2")
    assert p.pop_held() is None  # seq 1 is answered first
    assert p.pop_oldest().seq == 1
    assert p.pop_held() == "r2"
    assert p.pop_oldest().seq == 2
    assert p.pop_held() == "r3"
    assert p.pop_oldest().seq == 3
    assert p.pop_held() is None and not p.held and not p.inflight


@pytest.mark.parametrize(
    ("sent_at", "now", "overdue_seq"),
    [
        pytest.param([], 9.0, None, id="nothing in flight"),
        pytest.param([0.0], 0.4, None, id="not yet"),
        pytest.param([0.0], 0.5, 1, id="exactly the timeout"),
        pytest.param([0.0, 0.3], 0.6, 1, id="the oldest decides"),
        pytest.param([0.2, 0.3], 0.6, None, id="the oldest is recent enough"),
    ],
)
def test_overdue_is_the_oldest_request_past_the_timeout(
    sent_at: list[float], now: float, overdue_seq: int | None
) -> None:
    p = progress(1, state=REPLICATE)
    for seq, at in enumerate(sent_at, start=1):
        p.sent(seq, 1, at)
    oldest = p.overdue(now, timeout=0.5)
    assert (oldest.seq if oldest else None) == overdue_seq


@pytest.mark.parametrize(
    ("match", "request_", "follower_last", "hint", "rule", "next_index"),
    [
        pytest.param(0, sent(20), 205, 6, BackOff.SKIP_TERM, 6, id="skip the follower's term"),
        pytest.param(0, sent(20), 205, 25, BackOff.SKIP_TERM, 20, id="never past the refusal"),
        pytest.param(0, sent(20), 205, 0, BackOff.SKIP_TERM, 1, id="never below index 1"),
        pytest.param(8, sent(20), 205, 6, BackOff.OVERTAKEN, 9, id="never below match + 1"),
        pytest.param(0, sent(20), 10, 6, BackOff.JUMP, 11, id="a shorter log jumps instead"),
    ],
)
def test_back_off_with_a_conflict_hint(
    match: int, request_: Inflight, follower_last: int, hint: int, rule: BackOff, next_index: int
) -> None:
    """Raft dissertation §5.3: a refusal naming the follower's conflicting term lets the leader
    skip that whole term in one round trip; the guards of the plain rules still hold."""
    p = progress(request_.last_index + 1, match, REPLICATE)
    decision = p.back_off(request_, False, follower_last, hint)
    assert (decision.rule, decision.next_index) == (rule, next_index)
