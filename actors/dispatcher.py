"""Dispatchers: many Pykka actors sharing one thread, as Akka's dispatchers share a pool.

A Pykka ThreadingActor owns a thread, so every tell between two actors is a thread wake-up
(~20 us idle on a small machine, 100-250 us under load, and a GIL hand-off each time). Actors
that never block gain nothing from a thread of their own: a `Dispatcher` runs any number of
them, run-to-completion, on one thread, and a tell between two of them is a queue append.

    dispatcher = Dispatcher("peer-a")
    ref = start_on(dispatcher, Node, options, ...)    # a pykka.ActorRef, as Node.start gives
    ref.tell(message); ref.ask(GetStatus()); ref.proxy(); ref.stop()
    ...
    dispatcher.stop()                                 # once its actors have stopped

Each actor keeps its own mailbox and the whole pykka.ActorRef API (tell, ask, proxy, stop,
the registry), with the guarantees a ThreadingActor gives: its messages are handled one at a
time, in the order they were put, after its `on_start` and before its `on_stop`; an `ask`
still pending when it stops fails with ActorDeadError. What changes is only the thread.

The rule for an actor on a dispatcher: a handler must never block, for it blocks every actor
of that dispatcher (an `ask(...)` of another actor on the same dispatcher deadlocks it, as it
would an actor asking itself). Blocking work - an fsync, the user's state machine, a snapshot
written to disk - belongs to an actor with a thread of its own (docs/DESIGN.md, Threads).

Scheduling: an actor with messages is on the dispatcher's ready queue at most once; when its
turn comes it handles up to `throughput` of them (fairness between actors, Akka's
`throughput` setting) and goes to the back of the queue if more are left. A tell from the
dispatcher's own thread appends to a deque; from another thread it also wakes the dispatcher
if it was idle (queue.SimpleQueue).

Hosted I/O: a transport may run its socket loop on the dispatcher's thread instead of a thread
of its own (transport.base.IoHost; ZmqTransport.host_on). Then the dispatcher waits in the
transport's poll, not on its queue: one wait serves both, an inbound frame is delivered to the
Node as a queue append, and what the Node's actors send leaves from the thread that sent it
without waking another. A tell from another thread then wakes the poll (the transport's
eventfd). While I/O is attached the loop polls it without waiting at least every
`IO_EVERY_TURNS` turns, so neither side starves the other. At most one transport is attached;
it detaches itself when it stops, and the dispatcher goes on waiting on its queue.
"""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pykka
from pykka import ActorRegistry

from transport.base import HostedIo

log = logging.getLogger(__name__)

A = TypeVar("A", bound=pykka.Actor)

DEFAULT_THROUGHPUT = 32  # messages an actor handles before the next actor's turn
IO_EVERY_TURNS = 16  # with hosted I/O: turns between two polls of it while actors stay busy


class DispatchedInbox:
    """An actor's mailbox on a Dispatcher: pykka's ActorInbox protocol (put, get, empty) over a
    deque. `scheduled` (under `_lock`) says the actor is on the ready queue or running, so it is
    put there once however many messages arrive meanwhile."""

    __slots__ = ("_dispatcher", "_envelopes", "_lock", "actor", "scheduled", "started")

    def __init__(self, dispatcher: Dispatcher, actor: pykka.Actor) -> None:
        self._dispatcher = dispatcher
        self._envelopes: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self.actor = actor
        self.scheduled = False
        self.started = False  # on_start has run (on the dispatcher's thread)

    def put(self, envelope: Any, /) -> None:
        with self._lock:
            self._envelopes.append(envelope)
            if self.scheduled:
                return
            self.scheduled = True
        self._dispatcher.ready(self)

    def get(self) -> Any:
        """The oldest envelope; only on the dispatcher's thread, when `empty()` said not."""
        return self._envelopes.popleft()

    def empty(self) -> bool:
        return not self._envelopes

    def take(self) -> Any | None:
        """The oldest envelope, or None."""
        try:
            return self._envelopes.popleft()
        except IndexError:
            return None

    def schedule(self) -> None:
        """Put the actor on the ready queue (its start), whether or not it has messages."""
        with self._lock:
            self.scheduled = True
        self._dispatcher.ready(self)

    def release(self) -> bool:
        """The actor's turn ended: unschedule it, unless messages came in meanwhile (then it
        stays scheduled and True says: put it back on the ready queue)."""
        with self._lock:
            if self._envelopes:
                return True
            self.scheduled = False
            return False


class Dispatcher:
    """One daemon thread running the actors started on it with `start_on` (see the module
    docstring), and at most one transport's I/O (`claim_io`/`call_soon`/`set_io`, the
    transport.base.IoHost protocol). `stop()` ends the thread; stop its actors first (an actor
    still running then handles nothing more, and its pending asks are never answered)."""

    def __init__(self, name: str = "dispatcher", throughput: int = DEFAULT_THROUGHPUT) -> None:
        if throughput < 1:
            raise ValueError("throughput must be at least 1")
        self.name = name
        self.throughput = throughput
        # Inboxes with messages, callables to run (call_soon), None to stop.
        self._ready: queue.SimpleQueue[DispatchedInbox | Callable[[], None] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ident = -1  # the thread's, once it runs
        self._started = False
        self._start_lock = threading.Lock()
        self._io_claimed = False  # under _start_lock: a transport has claimed the I/O slot
        # Written only on the dispatcher's thread; read by `ready` on any (see `set_io`).
        self._io: HostedIo | None = None

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def ready(self, item: DispatchedInbox | Callable[[], None]) -> None:
        self._ready.put(item)
        # Appended BEFORE reading _io: a loop that attaches or detaches I/O re-reads the queue
        # before it waits, so whichever wait it is in, this item is seen (see set_io).
        io = self._io
        if io is not None and threading.get_ident() != self._ident:
            io.wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the dispatcher's thread, after what is queued; any thread. An exception
        it raises is logged."""
        self.ensure_started()
        self.ready(fn)

    def claim_io(self) -> bool:
        """Reserve the one I/O slot for a transport: True if it was free (then the transport
        calls `set_io` on this thread, via call_soon, and `set_io(None)` when it stops)."""
        with self._start_lock:
            if self._io_claimed:
                return False
            self._io_claimed = True
            return True

    def set_io(self, io: HostedIo | None) -> None:
        """Attach (or with None detach) the claimed I/O; on the dispatcher's thread only."""
        if threading.get_ident() != self._ident:
            raise RuntimeError("set_io must be called on the dispatcher's thread")
        self._io = io
        if io is None:
            with self._start_lock:
                self._io_claimed = False

    def ensure_started(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """End the thread after what is queued before this call (an attached I/O is closed
        first). Idempotent; from the dispatcher's own thread it only asks (the thread ends
        once the current turn does)."""
        with self._start_lock:
            if not self._started:
                return
        self._ready.put(None)
        io = self._io
        if io is not None:
            io.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._ident = threading.get_ident()
        ready = self._ready
        turns = 0
        while True:
            io = self._io
            if io is None:
                item = ready.get()
            else:
                try:
                    item = ready.get_nowait()
                except queue.Empty:
                    io.poll(True)  # sends what the turns queued, then waits for I/O or a tell
                    turns = 0
                    continue
                turns += 1
                if turns >= IO_EVERY_TURNS:
                    io.poll(False)
                    turns = 0
            if item is None:
                break
            try:
                if isinstance(item, DispatchedInbox):
                    self._turn(item)
                else:
                    item()
            except BaseException:  # the loop itself must never die: every actor depends on it
                log.exception("%s: a turn of %s failed", self.name, item)
            if isinstance(item, DispatchedInbox) and item.release():
                ready.put(item)
        if self._io is not None:
            self._io.close()  # stopped with a transport still attached: it stops here

    def _turn(self, inbox: DispatchedInbox) -> None:
        """Up to `throughput` messages of one actor, as pykka's actor loop handles them."""
        actor = inbox.actor
        if not inbox.started:
            inbox.started = True
            actor._actor_loop_setup()  # on_start, on this thread (failure: logged, stopped)
        stopped = actor.actor_stopped
        for _ in range(self.throughput):
            if stopped.is_set():
                break
            envelope = inbox.take()
            if envelope is None:
                break
            _handle(actor, envelope)
        if stopped.is_set():
            actor._actor_loop_teardown()  # answers what is left (a late ask: ActorDeadError)


def _handle(actor: pykka.Actor, envelope: Any) -> None:
    """One envelope, with the outcomes of pykka's Actor._actor_loop_running: a reply or the
    exception to whoever asked; an exception nobody asked for stops the actor (logged)."""
    try:
        response = actor._handle_receive(envelope.message)
        if envelope.reply_to is not None:
            envelope.reply_to.set(response)
    except Exception:
        if envelope.reply_to is not None:
            log.info("exception returned from %s to its caller", actor, exc_info=True)
            envelope.reply_to.set_exception()
        else:
            actor._handle_failure(*sys.exc_info())
            try:
                actor.on_failure(*sys.exc_info())
            except Exception:
                actor._handle_failure(*sys.exc_info())
    except BaseException:
        # pykka stops every actor here; on a shared thread this actor is all we may stop.
        log.exception("%s: stopping", actor)
        actor._stop()


def start_on(
    dispatcher: Dispatcher, actor_class: type[A], *args: Any, **kwargs: Any
) -> pykka.ActorRef[A]:
    """`actor_class(*args, **kwargs)` started on `dispatcher`: what `actor_class.start` does,
    with the dispatcher's thread in place of a new one. Its `on_start` runs there first."""
    actor = actor_class(*args, **kwargs)
    inbox = DispatchedInbox(dispatcher, actor)
    # pykka made a queue.Queue inbox in Actor.__init__ and its ActorRef keeps a reference to
    # it; nothing can have been told yet (the ref has not left this function), so replacing
    # both is safe.
    actor.actor_inbox = inbox
    actor.actor_ref.actor_inbox = inbox
    ActorRegistry.register(actor.actor_ref)
    dispatcher.ensure_started()
    inbox.schedule()
    return actor.actor_ref
