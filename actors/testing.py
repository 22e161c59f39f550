"""Test helpers: recording mailboxes, a recording state machine and an unthreaded actor
harness. For tests (the library never imports it); docs/TESTING.md shows how to use them, and
actors/testkit.py builds whole actors, elections, a fake RaftNode and clusters out of them.

    node_log = RecordingMailbox("log_manager")
    harness = ActorHarness(Node(options, log_manager=node_log, ...))
    harness.send(RequestVoteRequest(...))
    assert node_log.take(PersistTermVote) == [PersistTermVote(...)]

`ActorHarness` runs an actor without its pykka thread: `send` calls the handler directly, then
runs whatever the actor told itself (including timers that fired) until its own queue is empty.
Everything happens on the test's thread, so assertions need no waiting.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgpack
import pykka

from actors.base import RaftActor
from actors.clock import ManualClock
from actors.configuration import Configuration
from actors.metrics import Counter
from actors.state_machine import Command, StateMachine
from transport.codec import DEFAULT_MAX_FRAME_SIZE
from transport.rpc import RpcMessage

T = TypeVar("T")


class Transcript:
    """One ordered record shared by several recording mailboxes, for cross-collaborator order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, Any]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.entries]

    def clear(self) -> None:
        self.entries.clear()


class RecordingMailbox:
    """A stand-in ActorRef that records every message told to it."""

    def __init__(self, name: str = "mailbox", transcript: Transcript | None = None) -> None:
        self.name = name
        self.told: list[Any] = []
        self.transcript = transcript

    def tell(self, message: Any) -> None:
        self.told.append(message)
        if self.transcript is not None:
            self.transcript.entries.append((self.name, message))

    def of_type(self, message_type: type[T]) -> list[T]:
        return [m for m in self.told if isinstance(m, message_type)]

    def take(self, message_type: type[T] | None = None) -> list[Any]:
        """Return and forget the recorded messages (only those of `message_type` if given)."""
        if message_type is None:
            taken, self.told = self.told, []
            return taken
        taken = [m for m in self.told if isinstance(m, message_type)]
        self.told = [m for m in self.told if not isinstance(m, message_type)]
        return taken

    def clear(self) -> None:
        self.told.clear()

    def __repr__(self) -> str:
        return f"RecordingMailbox({self.name!r}, {len(self.told)} told)"


def is_pending(future: pykka.Future[Any]) -> bool:
    """Whether `future` has neither a result nor an exception yet (it never waits)."""
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return True
    except Exception:
        return False
    return False


class RecordingTransport:
    """A Transport that records what was sent, for actor unit tests."""

    def __init__(self, local_id: str = "127.0.0.1:1", transcript: Transcript | None = None) -> None:
        self._local_id = local_id
        self.sent: list[tuple[str, RpcMessage]] = []
        self.transcript = transcript
        self.peers: set[str] = set()  # every id ensure_peer was called with

    @property
    def local_id(self) -> str:
        return self._local_id

    @property
    def max_frame_size(self) -> int:
        return DEFAULT_MAX_FRAME_SIZE

    def start(self, deliver: Any, on_failure: Any = None, on_drained: Any = None) -> None:
        pass

    def send(self, to: str, message: RpcMessage) -> None:
        self.sent.append((to, message))
        if self.transcript is not None:
            self.transcript.entries.append((f"send:{to}", message))

    def stop(self) -> None:
        pass

    def ensure_peer(self, peer_id: str) -> None:
        self.peers.add(peer_id)

    def take(self, message_type: type[T] | None = None) -> list[tuple[str, Any]]:
        """Return and forget the recorded sends (only those of `message_type` if given)."""
        taken: list[tuple[str, Any]] = []
        kept: list[tuple[str, Any]] = []
        for sent in self.sent:
            wanted = message_type is None or isinstance(sent[1], message_type)
            (taken if wanted else kept).append(sent)
        self.sent = kept
        return taken


class RecordingStateMachine(StateMachine):
    """Records everything the FSMCaller does to it; the result of each command is its index.

    `applied` holds (index, term, data) of every command in apply order, `batches` the indexes
    of each on_apply call, `events` the leadership and shutdown callbacks, `errors` what
    on_error got. Every change happens under `changed` and notifies it, so a test on another
    thread can `wait_until(..., condition=sm.changed)` (share one condition across peers to
    wait on a whole cluster). `fail_at` makes on_apply raise on a batch holding that index;
    `short_results` makes it return one result too few (both put the node into ERROR).
    `on_read(query)` answers (query, the last applied index): what state a read saw; a query
    of b"boom" raises. `following` records on_start/stop_following ("follow LEADER TERM",
    "unfollow LEADER TERM") and `confs` each on_configuration_committed as (index, voters).

    Snapshots: its state is `applied` itself (msgpack), so a peer that installed a snapshot
    still shows the whole applied history, and histories compare across peers. `loaded` lists
    the snapshot indexes loaded; `fail_snapshot_save` makes saving raise (in the part that runs
    off the apply path).
    """

    def __init__(
        self,
        changed: threading.Condition | None = None,
        *,
        fail_at: int | None = None,
        short_results: bool = False,
    ) -> None:
        self.changed = changed or threading.Condition()
        self.applied: list[tuple[int, int, bytes]] = []
        self.batches: list[list[int]] = []
        self.events: list[str] = []
        self.errors: list[BaseException] = []
        self.leader_term: int | None = None
        self.fail_at = fail_at
        self.short_results = short_results
        self.loaded: list[int] = []
        self.fail_snapshot_save = False
        self.following: list[str] = []
        self.confs: list[tuple[int, list[str]]] = []

    @property
    def applied_indexes(self) -> list[int]:
        with self.changed:
            return [index for index, _, _ in self.applied]

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        indexes = [c.index for c in commands]
        if self.fail_at in indexes:
            raise RuntimeError(f"boom at {self.fail_at}")
        with self.changed:
            self.applied.extend((c.index, c.term, c.data) for c in commands)
            self.batches.append(indexes)
            self.changed.notify_all()
        return indexes[:-1] if self.short_results else indexes

    def on_read(self, query: bytes) -> Any:
        if query == b"boom":
            raise RuntimeError("on_read failed, as the test asked")
        with self.changed:
            return (query, self.applied[-1][0] if self.applied else 0)

    def on_snapshot_save(self, writer: Any) -> Callable[[], None]:
        with self.changed:
            state = list(self.applied)  # the consistent view; written off the apply path

        def write() -> None:
            if self.fail_snapshot_save:
                raise RuntimeError("snapshot save failed, as the test asked")
            writer.write(msgpack.packb(state))

        return write

    def on_snapshot_load(self, reader: Any) -> None:
        state = msgpack.unpackb(reader.read())
        with self.changed:
            self.applied = [(index, term, data) for index, term, data in state]
            self.loaded.append(reader.meta.last_index)
            self.changed.notify_all()

    def on_leader_start(self, term: int) -> None:
        self._event(f"start {term}", leader_term=term)

    def on_leader_stop(self, term: int) -> None:
        self._event(f"stop {term}", leader_term=None)

    def on_start_following(self, leader_id: str, term: int) -> None:
        self._record(self.following, f"follow {leader_id} {term}")

    def on_stop_following(self, leader_id: str, term: int) -> None:
        self._record(self.following, f"unfollow {leader_id} {term}")

    def on_configuration_committed(self, conf: Configuration, index: int) -> None:
        self._record(self.confs, (index, sorted(conf.peers)))

    def _record(self, into: list[Any], item: Any) -> None:
        with self.changed:
            into.append(item)
            self.changed.notify_all()

    def on_error(self, error: BaseException) -> None:
        with self.changed:
            self.errors.append(error)
            self.changed.notify_all()

    def on_shutdown(self) -> None:
        self._event("shutdown", leader_term=None)

    def _event(self, event: str, leader_term: int | None) -> None:
        with self.changed:
            self.events.append(event)
            self.leader_term = leader_term
            self.changed.notify_all()


def counts(counter: Counter) -> dict[str, int]:
    """A one-label counter's series as {label value: count}, e.g. proposals by outcome."""
    return {sample.labels[0]: sample.value for sample in counter.samples()}


class _SelfQueue:
    def __init__(self) -> None:
        self.queue: deque[Any] = deque()

    def tell(self, message: Any) -> None:
        self.queue.append(message)


class ActorHarness:
    """Drives one actor on the test's thread (no pykka thread). See the module docstring."""

    def __init__(self, actor: RaftActor, clock: ManualClock | None = None) -> None:
        self.actor = actor
        self.clock = clock
        self._self = _SelfQueue()
        actor.bind_self(self._self)
        actor.on_start()
        self.run()

    def send(self, message: Any) -> Any:
        result = self.actor.receive(message)
        self.run()
        return result

    def run(self) -> int:
        """Handle everything the actor told itself, until quiet. Returns how many."""
        handled = 0
        while self._self.queue:
            self.actor.receive(self._self.queue.popleft())
            handled += 1
        return handled

    def advance(self, seconds: float, *, until: Callable[[], bool] | None = None) -> bool:
        """Advance the manual clock (firing timers) and handle what they told the actor.

        Nothing but timers happens inside the window: no reply reaches the actor between two
        deadlines, so a round the actor starts and times out within one call (a Node's
        pre-vote, in a window longer than an election timeout) is lost without an answer. To
        stop at the moment of interest instead, pass `until`: it is checked before the first
        deadline and after each one (once the actor has reacted), and the clock stops at the
        first deadline after which it holds. Returns whether `until` stopped it early.
        (`NodeKit.advance` of actors/testkit_node.py raises when a pre-vote is lost so.)"""
        clock = self.clock
        assert clock is not None, "ActorHarness was given no ManualClock"
        end = clock.now() + seconds
        if until is not None and until():
            return True
        # One deadline at a time, handling the actor's reaction in between, so a timer the
        # actor schedules while reacting still fires inside this window, in order.
        while (deadline := clock.next_deadline()) is not None and deadline <= end:
            clock.advance(deadline - clock.now())
            self.run()
            if until is not None and until():
                return True
        clock.advance(end - clock.now())
        return False

    def stop(self) -> None:
        self.actor.on_stop()
