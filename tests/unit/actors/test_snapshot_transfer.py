"""SnapshotTransfer and Throttle: the window, the answers (resume, rewind, stale), overdue
chunks and the token bucket, without an actor."""

from __future__ import annotations

import pytest

from actors.snapshot_transfer import SnapshotTransfer, Throttle
from storage.memory import MemorySnapshotStorage
from storage.snapshot_storage import SnapshotMeta

DATA = bytes(range(256)) * 4  # 1024 bytes


def transfer(size: int = len(DATA), chunk: int = 300, inflight: int = 2) -> SnapshotTransfer:
    store = MemorySnapshotStorage()
    writer = store.create_writer(SnapshotMeta(10, 2, b"conf"))
    writer.write(DATA[:size])
    meta = store.commit(writer)
    return SnapshotTransfer(store.open(meta.last_index), 0.0, chunk, inflight)


def send_all(t: SnapshotTransfer, now: float = 0.0, first_seq: int = 1) -> list[tuple[int, int]]:
    """Send whatever the window allows; (seq, offset) of each."""
    out = []
    seq = first_seq
    while (chunk := t.next_chunk()) is not None:
        offset, data = chunk
        assert data == DATA[offset : offset + len(data)]
        t.sent(seq, offset, len(data), now)
        out.append((seq, offset))
        seq += 1
    return out


def test_the_window_holds_max_inflight_chunks_in_order() -> None:
    t = transfer(inflight=2)
    assert send_all(t) == [(1, 0), (2, 300)]
    assert t.answered(1, 300) is not None and t.acked == 300
    assert send_all(t, first_seq=3) == [(3, 600)]
    assert t.answered(2, 600) is not None
    assert send_all(t, first_seq=4) == [(4, 900)]  # the final chunk: 124 bytes
    assert t.final_sent and t.next_chunk() is None
    assert str(t) == "snapshot 10 58% of 1024 bytes"


def test_an_empty_snapshot_is_one_empty_final_chunk() -> None:
    t = transfer(size=0)
    assert t.next_chunk() == (0, b"")
    assert t.sent(1, 0, 0, 0.0) is True
    assert t.next_chunk() is None


@pytest.mark.parametrize(
    ("held", "resend_from"),
    [
        pytest.param(300, None, id="holds the chunk: no rewind"),
        pytest.param(0, 0, id="lost its download: from the start"),
        pytest.param(150, 150, id="holds part: from there"),
    ],
)
def test_an_answer_short_of_its_chunk_rewinds_to_what_is_held(
    held: int, resend_from: int | None
) -> None:
    t = transfer()
    send_all(t)  # 1 (0..300) and 2 (300..600) in flight
    assert t.answered(1, held) is not None and t.acked == held
    if resend_from is None:
        assert [c.seq for c in t.inflight] == [2]
    else:
        assert not t.inflight and t.next_offset == resend_from
        assert t.answered(2, 600) is None  # stale now: it was in the forgotten window


def test_a_follower_that_held_more_before_is_believed_now() -> None:
    t = transfer()
    send_all(t)
    t.answered(1, 300)
    t.answered(2, 600)
    send_all(t, first_seq=3)
    t.answered(3, 0)  # it restarted: the latest answer is the truth
    assert (t.acked, t.next_offset, t.final_sent) == (0, 0, False)


def test_an_unknown_or_old_seq_is_stale() -> None:
    t = transfer()
    send_all(t)
    assert t.answered(99, 1024) is None
    assert len(t.inflight) == 2  # a seq not in flight leaves the window alone
    assert t.answered(1, 300) is not None
    assert t.answered(1, 300) is None  # answered already


def test_overdue_chunks_are_sent_again_from_what_was_acknowledged() -> None:
    t = transfer()
    send_all(t, now=0.0)
    t.answered(1, 300)
    assert not t.resend_overdue(now=0.4, timeout=0.5)
    assert t.resend_overdue(now=0.5, timeout=0.5)
    assert t.next_offset == 300 and not t.inflight
    assert send_all(t, now=0.5, first_seq=3) == [(3, 300), (4, 600)]


def test_an_unlimited_throttle_never_waits() -> None:
    throttle = Throttle(0, 100, 0.0)
    assert [throttle.wait(10_000, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_the_throttle_allows_the_rate_and_carries_a_late_timer_over() -> None:
    throttle = Throttle(rate=100, chunk=100, now=0.0)
    assert throttle.wait(100, 0.0) == 0.0  # one chunk at once
    assert throttle.wait(100, 0.0) == pytest.approx(1.0)  # then the rate
    assert throttle.wait(100, 0.5) == pytest.approx(0.5)
    assert throttle.wait(100, 1.3) == 0.0  # the timer fired 0.3 s late...
    assert throttle.wait(100, 2.0) == 0.0  # ...and the next chunk makes up for it
    assert throttle.wait(100, 2.0) == pytest.approx(1.0)
    assert throttle.wait(100, 100.0) == 0.0  # a long pause saves up two chunks, not more
    assert throttle.wait(100, 100.0) == 0.0
    assert throttle.wait(100, 100.0) == pytest.approx(1.0)
