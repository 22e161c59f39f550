"""Dispatcher: actors sharing one thread keep a ThreadingActor's guarantees (own mailbox, one
message at a time in order, on_start first and on_stop last, the ActorRef API), with turns
that are fair between them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pykka
import pytest

from actors.base import RaftActor, handles
from actors.dispatcher import IO_EVERY_TURNS, DispatchedInbox, Dispatcher, start_on
from actors.messages import FatalError
from actors.testing import RecordingMailbox

WAIT = 10.0


@dataclass(frozen=True)
class Note:
    text: str


@dataclass(frozen=True)
class Forward:
    """Note `text`, then tell `to` the same."""

    text: str
    to: Any


@dataclass(frozen=True)
class Block:
    gate: threading.Event
    entered: threading.Event | None = None


@dataclass(frozen=True)
class Explode:
    pass


class Recorder(RaftActor):
    """Appends (name, what, thread) to a shared journal; checks no two handlers overlap."""

    def __init__(self, name: str, journal: list[tuple[str, str, int]], busy: list[int]):
        super().__init__(supervisor=None)
        self.name = name
        self.journal = journal
        self.busy = busy  # a shared count of handlers running now: never above one

    def _note(self, what: str) -> None:
        self.busy[0] += 1
        assert self.busy[0] == 1, "two handlers ran at once"
        self.journal.append((self.name, what, threading.get_ident()))
        self.busy[0] -= 1

    def startup(self) -> None:
        self._note("start")

    def shutdown(self) -> None:
        self._note("stop")

    @handles(Note)
    def on_note(self, msg: Note) -> str:
        self._note(msg.text)
        return f"{self.name}:{msg.text}"

    @handles(Forward)
    def on_forward(self, msg: Forward) -> None:
        self._note(msg.text)
        msg.to.tell(Note(msg.text))

    @handles(Block)
    def on_block(self, msg: Block) -> None:
        if msg.entered is not None:
            msg.entered.set()
        msg.gate.wait(WAIT)  # test-only: holds the dispatcher so that work queues up

    @handles(Explode)
    def on_explode(self, msg: Explode) -> None:
        raise RuntimeError("boom")

    def double(self, n: int) -> int:  # for the proxy
        return 2 * n


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    d = Dispatcher("test-dispatcher", throughput=4)
    try:
        yield d
    finally:
        for ref in pykka.ActorRegistry.get_all():  # whatever a failing test left running
            if isinstance(ref.actor_inbox, DispatchedInbox):
                ref.stop(block=False)
        d.stop(WAIT)


def started(d: Dispatcher, *names: str, journal: list[Any] | None = None) -> list[Any]:
    journal = [] if journal is None else journal
    busy = [0]
    return [start_on(d, Recorder, name, journal, busy) for name in names]


def test_actors_share_the_dispatchers_thread_one_message_at_a_time_in_order(
    dispatcher: Dispatcher,
) -> None:
    journal: list[tuple[str, str, int]] = []
    a, b = started(dispatcher, "a", "b", journal=journal)

    def send(ref: Any, prefix: str) -> None:
        for n in range(200):
            ref.tell(Note(f"{prefix}{n}"))

    senders = [threading.Thread(target=send, args=(r, p)) for r, p in ((a, "x"), (b, "y"))]
    for sender in senders:
        sender.start()
    send(a, "z")
    for sender in senders:
        sender.join()
    assert a.ask(Note("last"), timeout=WAIT) == "a:last"
    assert b.ask(Note("last"), timeout=WAIT) == "b:last"
    a.stop(block=True, timeout=WAIT)
    b.stop(block=True, timeout=WAIT)

    assert {thread for _, _, thread in journal} == {dispatcher.thread.ident}
    for name, prefixes in (("a", "xz"), ("b", "y")):
        seen = [what for who, what, _ in journal if who == name]
        assert seen[0] == "start" and seen[-2:] == ["last", "stop"]
        for prefix in prefixes:  # each sender's messages in the order it put them
            mine = [w for w in seen if w.startswith(prefix)]
            assert mine == [f"{prefix}{n}" for n in range(200)]


def test_a_tell_between_actors_of_one_dispatcher_stays_on_its_thread(
    dispatcher: Dispatcher,
) -> None:
    journal: list[tuple[str, str, int]] = []
    a, b = started(dispatcher, "a", "b", journal=journal)
    a.ask(Forward("hop", b), timeout=WAIT)  # a has told b when this returns
    assert b.ask(Note("after"), timeout=WAIT) == "b:after"
    assert [(who, what) for who, what, _ in journal if what != "start"] == [
        ("a", "hop"),
        ("b", "hop"),
        ("b", "after"),
    ]


def test_turns_are_fair_an_actor_with_a_backlog_yields_after_throughput_messages(
    dispatcher: Dispatcher,
) -> None:
    journal: list[tuple[str, str, int]] = []
    gate_keeper, busy, quiet = started(dispatcher, "gate", "busy", "quiet", journal=journal)
    for ref in (gate_keeper, busy, quiet):
        ref.ask(Note("sync"), timeout=WAIT)  # every start turn is over
    gate, entered = threading.Event(), threading.Event()
    gate_keeper.tell(Block(gate, entered))
    assert entered.wait(WAIT)  # the dispatcher is held: what follows queues up
    for n in range(20):
        busy.tell(Note(str(n)))
    quiet.tell(Note("q"))
    gate.set()
    quiet.ask(Note("sync"), timeout=WAIT)
    busy.ask(Note("sync"), timeout=WAIT)
    order = [(who, what) for who, what, _ in journal if what not in ("start", "sync")]
    # busy was ready first; after 4 (the throughput) of its 20 it goes behind quiet.
    assert order[:5] == [("busy", "0"), ("busy", "1"), ("busy", "2"), ("busy", "3"), ("quiet", "q")]


def test_ask_proxy_and_stop_behave_as_on_a_threading_actor(dispatcher: Dispatcher) -> None:
    [a] = started(dispatcher, "a")
    assert a.proxy().double(21).get(timeout=WAIT) == 42
    assert a.ask(Note("n"), timeout=WAIT) == "a:n"
    gate = threading.Event()
    a.tell(Block(gate))
    late = a.ask(Note("behind the stop"), block=False)
    stopping = a.stop(block=False)
    after_stop = a.ask(Note("after"), block=False)  # put before the stop is handled
    gate.set()
    assert stopping.get(timeout=WAIT) is True
    assert late.get(timeout=WAIT) == "a:behind the stop"
    with pytest.raises(pykka.ActorDeadError):
        after_stop.get(timeout=WAIT)  # answered, not left pending for ever
    with pytest.raises(pykka.ActorDeadError):
        a.tell(Note("dead"))
    assert not a.is_alive() and a not in pykka.ActorRegistry.get_all()


def test_a_raft_actor_that_raises_reports_fatal_and_keeps_serving(dispatcher: Dispatcher) -> None:
    supervisor = RecordingMailbox("node")
    ref = start_on(dispatcher, Recorder, "a", [], [0])
    ref.proxy().supervisor = supervisor  # set on the actor, through its own mailbox
    ref.tell(Explode())
    assert ref.ask(Note("still here"), timeout=WAIT) == "a:still here"
    [fatal] = supervisor.told
    assert isinstance(fatal, FatalError) and "boom" in fatal.reason


class Plain(pykka.ThreadingActor):
    """A plain pykka actor (not a RaftActor): pykka's own failure rules apply."""

    def __init__(self, fail_start: bool = False) -> None:
        super().__init__()
        self.fail_start = fail_start

    def on_start(self) -> None:
        if self.fail_start:
            raise RuntimeError("no start")

    def on_receive(self, message: Any) -> Any:
        if message == "raise":
            raise ValueError("asked for it")
        return message


def test_a_plain_pykka_actor_runs_with_pykkas_failure_rules(dispatcher: Dispatcher) -> None:
    ref = start_on(dispatcher, Plain)
    assert ref.ask("hello", timeout=WAIT) == "hello"
    with pytest.raises(ValueError, match="asked for it"):
        ref.ask("raise", timeout=WAIT)  # to the caller; the actor lives on
    assert ref.ask("again", timeout=WAIT) == "again"
    ref.tell("raise")  # nobody to answer: the actor stops, as pykka's would
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("gone", timeout=WAIT)
    broken = start_on(dispatcher, Plain, fail_start=True)
    with pytest.raises(pykka.ActorDeadError):
        broken.ask("anything", timeout=WAIT)
    assert dispatcher.thread.is_alive()  # the thread outlives its actors


def test_dispatcher_stop_ends_its_thread_and_is_idempotent() -> None:
    d = Dispatcher("short-lived")
    d.stop(WAIT)  # never started: nothing to do
    ref = start_on(d, Plain)
    assert ref.ask("x", timeout=WAIT) == "x"
    ref.stop(block=True, timeout=WAIT)
    d.stop(WAIT)
    d.stop(WAIT)
    assert not d.thread.is_alive()
    with pytest.raises(ValueError, match="throughput"):
        Dispatcher(throughput=0)


# -- hosted I/O (transport.base.HostedIo) --------------------------------------------------------


class FakeIo:
    """A HostedIo that journals its polls next to the Recorders' handlers. A blocking poll
    waits for `wake` far longer than any test waits for an answer, so an answer that arrives
    proves the tell woke it."""

    def __init__(self, dispatcher: Dispatcher, journal: list[Any]) -> None:
        self.dispatcher = dispatcher
        self.journal = journal
        self.woken = threading.Event()
        self.closed = threading.Event()
        self.polls = 0

    def poll(self, block: bool) -> None:
        self.polls += 1
        self.journal.append(("io", "wait" if block else "peek", threading.get_ident()))
        if block:
            self.woken.wait(10 * WAIT)
            self.woken.clear()

    def wake(self) -> None:
        self.woken.set()

    def close(self) -> None:
        self.dispatcher.set_io(None)
        self.closed.set()


def attached(d: Dispatcher, journal: list[Any]) -> FakeIo:
    io = FakeIo(d, journal)
    assert d.claim_io()
    done = threading.Event()
    d.call_soon(lambda: (d.set_io(io), done.set()))
    assert done.wait(WAIT)
    return io


def test_hosted_io_is_polled_on_the_dispatchers_thread_and_a_tell_from_elsewhere_wakes_it(
    dispatcher: Dispatcher,
) -> None:
    journal: list[Any] = []
    io = attached(dispatcher, journal)
    (a,) = started(dispatcher, "a", journal=journal)
    for n in range(3):  # each ask finds the loop blocked in the poll; only wake() ends it
        assert a.ask(Note(str(n)), timeout=WAIT) == f"a:{n}"
    threads = {thread for _, _, thread in journal}
    assert threads == {dispatcher.thread.ident}
    assert io.polls >= 3


def test_busy_actors_still_get_io_polled_every_io_every_turns() -> None:
    d = Dispatcher("one-at-a-time", throughput=1)  # one message per turn
    try:
        journal: list[Any] = []
        attached(d, journal)
        gate_keeper, busy = started(d, "gate", "busy", journal=journal)
        gate_keeper.ask(Note("sync"), timeout=WAIT)
        busy.ask(Note("sync"), timeout=WAIT)
        gate, entered = threading.Event(), threading.Event()
        gate_keeper.tell(Block(gate, entered))
        assert entered.wait(WAIT)
        for n in range(5 * IO_EVERY_TURNS):
            busy.tell(Note(str(n)))
        del journal[:]
        gate.set()
        busy.ask(Note("sync"), timeout=WAIT)
        turns_since_poll = 0
        for who, _, _ in journal:
            turns_since_poll = 0 if who == "io" else turns_since_poll + 1
            assert turns_since_poll <= IO_EVERY_TURNS
        peeks = [what for who, what, _ in journal if who == "io"]
        assert peeks.count("peek") >= 4  # never idle meanwhile, so never a waiting poll
        for ref in (gate_keeper, busy):
            ref.stop(block=True, timeout=WAIT)
    finally:
        d.stop(WAIT)


def test_one_io_slot_claimed_and_set_only_on_the_dispatchers_thread(
    dispatcher: Dispatcher,
) -> None:
    journal: list[Any] = []
    io = attached(dispatcher, journal)
    assert not dispatcher.claim_io()  # a second transport runs a thread of its own
    with pytest.raises(RuntimeError, match="dispatcher's thread"):
        dispatcher.set_io(None)
    detached = threading.Event()
    dispatcher.call_soon(lambda: (dispatcher.set_io(None), detached.set()))
    assert detached.wait(WAIT)
    polls = io.polls
    (a,) = started(dispatcher, "a", journal=journal)
    assert a.ask(Note("x"), timeout=WAIT) == "a:x"  # back to waiting on its own queue
    assert io.polls == polls
    assert dispatcher.claim_io()  # the slot is free again


def test_stopping_the_dispatcher_closes_the_io_still_attached() -> None:
    d = Dispatcher("closing")
    io = attached(d, [])
    d.stop(WAIT)
    assert io.closed.is_set()
    assert not d.thread.is_alive()


def test_call_soon_runs_on_the_thread_and_a_failure_does_not_end_it(
    dispatcher: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int | None] = []

    def boom() -> None:
        raise RuntimeError("callable failed")

    dispatcher.call_soon(boom)
    done = threading.Event()
    dispatcher.call_soon(lambda: (ran.append(threading.get_ident()), done.set()))
    assert done.wait(WAIT)
    assert ran == [dispatcher.thread.ident]
    assert any("callable failed" in str(r.exc_info) for r in caplog.records)
