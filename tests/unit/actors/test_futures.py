"""RaftFuture keeps pykka.ThreadingFuture's contract on its leaner hot paths: settle once,
get (with timeout, value or exception), the get-hook combinators, callbacks, and futures of
one batch sharing a Condition without waking each other's waiters for good."""

from __future__ import annotations

import queue
import threading

import pykka
import pytest

from actors.errors import RaftTimeoutError
from actors.futures import CompletionFuture, RaftFuture, complete, fail
from actors.wait import wait_until

WAIT = 10.0


def test_it_has_every_field_a_pykka_threading_future_has() -> None:
    ours, theirs = vars(RaftFuture()), vars(pykka.ThreadingFuture())
    assert set(theirs) <= set(ours)
    assert {name: type(value) for name, value in theirs.items()} == {
        name: type(ours[name]) for name in theirs
    }


def test_value_and_exception_settle_once_and_get_returns_or_raises() -> None:
    ok: RaftFuture[int] = RaftFuture()
    complete(ok, 7)
    complete(ok, 8)  # a second outcome is ignored
    with pytest.raises(queue.Full):
        ok.set(9)  # pykka's signal, kept
    assert ok.get() == 7 and ok.get(timeout=0) == 7 and ok.done() and ok.error() is None
    bad: RaftFuture[int] = RaftFuture()
    fail(bad, ValueError("no"))
    fail(bad, KeyError("later"))
    with pytest.raises(ValueError, match="no"):
        bad.get(timeout=0)
    assert isinstance(bad.error(), ValueError)
    with pytest.raises(ValueError):
        bad.result()


def test_set_exception_without_arguments_takes_the_exception_being_handled() -> None:
    future: RaftFuture[int] = RaftFuture()
    try:
        raise KeyError("current")
    except KeyError:
        future.set_exception()
    with pytest.raises(KeyError, match="current"):
        future.get()


def test_an_unsettled_get_times_out_as_raft_and_pykka_timeouts() -> None:
    future: RaftFuture[int] = RaftFuture()
    with pytest.raises(RaftTimeoutError):
        future.get(timeout=0.01)
    with pytest.raises(pykka.Timeout):
        future.get(timeout=0.01)


def test_pykkas_combinators_still_work_on_it() -> None:
    a: RaftFuture[int] = RaftFuture()
    b: RaftFuture[int] = RaftFuture()
    doubled = a.map(lambda v: 2 * v)
    a.set(3)
    b.set(4)
    assert doubled.get(timeout=WAIT) == 6
    assert pykka.get_all([a, b], timeout=WAIT) == [3, 4]
    assert a.join(b).get(timeout=WAIT) == [3, 4]


def test_callbacks_run_once_on_the_settling_thread_or_at_once_when_settled() -> None:
    seen: list[tuple[int, int | None]] = []
    future: RaftFuture[int] = RaftFuture()
    future.add_done_callback(lambda f: seen.append((f.result(), threading.get_ident())))
    setter = threading.Thread(target=lambda: future.set(5))
    setter.start()
    setter.join(WAIT)
    future.add_done_callback(lambda f: seen.append((f.result(), threading.get_ident())))
    assert seen == [(5, setter.ident), (5, threading.get_ident())]
    values: list[tuple[object, object]] = []
    completion = CompletionFuture(lambda value, error: values.append((value, error)))
    completion.set("x")
    assert values == [("x", None)]


def test_a_batch_shares_one_condition_and_each_waiter_waits_for_its_own_future() -> None:
    futures = RaftFuture.batch(3)
    assert len({id(f._condition) for f in futures}) == 1
    first, second, third = futures
    got: list[int] = []
    condition = third._condition
    waiting = threading.Thread(target=lambda: got.append(third.get(timeout=WAIT)))
    waiting.start()
    wait_until(lambda: condition._waiters, "the waiter to wait", WAIT)  # type: ignore[attr-defined]
    first.set(1)  # wakes the waiter on the shared condition (it leaves _waiters) ...
    second.set(2)
    # ... and it must wait again, for its own future: back in _waiters, nothing returned.
    wait_until(lambda: condition._waiters, "the waiter to wait again", WAIT)  # type: ignore[attr-defined]
    assert waiting.is_alive() and got == []
    third.set(3)
    waiting.join(WAIT)
    assert got == [3]
    assert [f.get(timeout=0) for f in futures] == [1, 2, 3]
