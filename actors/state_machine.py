"""The user's state machine: what FSMCaller applies committed commands to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from storage.entry import LogEntry, slot_setters

if TYPE_CHECKING:
    from actors.configuration import Configuration
    from storage.snapshot_storage import SnapshotReader, SnapshotWriter


R = TypeVar("R")  # what `on_apply` returns per command: the result of `RaftNode.apply`
V = TypeVar("V")  # what `on_read` returns: the result of `RaftNode.read`


@dataclass(frozen=True, slots=True)
class Command:
    """A committed user command, as the state machine sees it."""

    index: int
    term: int
    data: bytes


_new_object = object.__new__
_set_index, _set_term, _set_data = slot_setters(Command, "index", "term", "data")


def commands_of(entries: Sequence[LogEntry]) -> list[Command]:
    """Command(e.index, e.term, e.data) for each entry, without the frozen __init__'s
    per-object frame (the FSMCaller builds one per applied entry)."""
    commands = list(map(_new_object, repeat(Command, len(entries))))
    # any() consumes each map: the setters return None, so it never stops early.
    any(map(_set_index, commands, map(attrgetter("index"), entries)))
    any(map(_set_term, commands, map(attrgetter("term"), entries)))
    any(map(_set_data, commands, map(attrgetter("data"), entries)))
    return commands


class StateMachine(Generic[R, V]):
    """Subclass and override `on_apply`. Every method runs on the FSMCaller's thread, one at a
    time, so an implementation needs no locking of its own.

    Determinism: `on_apply` must depend only on the commands (and the state they built), never
    on time, randomness or the local node, or replicas diverge.

    What a failure costs depends on whether the replicated state may be broken by it:
    - `on_apply` and `on_snapshot_load` change the state: raising puts the peer in ERROR (it
      stops applying rather than diverge).
    - `on_read` must not change it: raising fails that one read (ReadError), nothing else.
    - `on_snapshot_save` raising abandons that snapshot only.
    - The events (`on_leader_start/stop`, `on_start/stop_following`,
      `on_configuration_committed`, `on_error`, `on_shutdown`) are notifications that must
      not touch the replicated state: raising is logged and counted
      (`pykka_raft_callback_errors_total{callback}`), and the peer goes on.

    Typed results: `class Counter(StateMachine[int, int])` makes `RaftNode.start(..., Counter(),
    ...)` a `RaftNode[int, int]`, whose `apply(...)` is a `RaftFuture[int]` (and `read` too);
    a plain `StateMachine` subclass gives `Any` for both.

    Never block on this node's futures here (`apply(...).get()`, `read(...).get()`): what
    would complete them runs on this very thread, after the callback returns. Such a `get`
    raises actors.errors.DeadlockError at once; chain with a callback instead.

    `blocking` says whether its callbacks may wait: on a disk, the network, a lock, a sleep.
    True (the default) gives the FSMCaller a thread of its own. A state machine whose every
    callback only computes in memory may set it False: the FSMCaller then shares the peer's
    dispatcher with the Node (docs/DESIGN.md, Threads), one thread hand-off less per applied
    batch and per read, and replies leave without a wake-up. Its callbacks then hold up the
    whole peer, heartbeats included, for as long as they run: keep each short (applying is
    batched by `max_apply_batch` already). A snapshot's load reading a local file is short
    enough; a save's slow part is the callable it returns, which the SnapshotExecutor runs.
    """

    blocking: ClassVar[bool] = True

    def on_apply(self, commands: Sequence[Command]) -> list[R]:
        """Apply a batch of committed commands in log order; return one result per command
        (the result completes the future of the client that proposed it). Raising puts the node
        into ERROR: it stops applying and serving rather than diverge."""
        raise NotImplementedError

    def on_read(self, query: bytes) -> V:
        """Answer a read (`RaftNode.read`) from the current state, without changing it. Called
        on the FSMCaller's thread between two `on_apply` batches, once the read's index is
        applied. Raising fails that read's future with actors.errors.ReadError (its `cause`
        is the exception) and leaves the node serving. The default refuses, so that
        `RaftNode.read` fails with ReadError at once: such a state machine is read only
        through the log (apply a read command)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement on_read")

    @classmethod
    def supports_reads(cls) -> bool:
        """Whether this class overrides `on_read`."""
        return cls.on_read is not StateMachine.on_read

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None] | None:
        """Save the state as of the last applied command (`writer.meta.last_index`) into
        `writer`, a binary file (write). Called on the FSMCaller's thread between two
        `on_apply` batches, so the state is consistent; applying waits until this returns.

        So that applying does not stop for the length of a large snapshot, capture a
        consistent view quickly (a copy, copy-on-write, a version) and return a function that
        writes that view into `writer`: it runs on the snapshot thread, concurrently with later
        `on_apply` calls, and must not touch the live state. Return None when everything was
        written here already. Raising (here or in the returned function) abandons this snapshot
        only: it is logged, `RaftNode.snapshot()` fails, and the node tries again after
        another `snapshot_threshold` entries.

        A state machine that does not override both this and `on_snapshot_load` never
        snapshots, so its log is never compacted."""
        raise NotImplementedError

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        """Replace the whole state with the snapshot in `reader` (a binary file: read); its
        `reader.meta.last_index` is the last command it includes. Called at start (the newest
        snapshot, then the log after it is applied) and when the leader installs a snapshot on
        this follower. A corrupt snapshot raises (CorruptSnapshotError) from `reader.read` at
        its end. Raising puts the node into ERROR."""
        raise NotImplementedError

    @classmethod
    def supports_snapshots(cls) -> bool:
        """Whether this class overrides both snapshot methods."""
        return (
            cls.on_snapshot_save is not StateMachine.on_snapshot_save
            and cls.on_snapshot_load is not StateMachine.on_snapshot_load
        )

    # -- events: in the order they happen, on the FSMCaller's thread, between `on_apply`
    # batches. Each `on_leader_start` is followed by exactly one `on_leader_stop` of the same
    # term, and each `on_start_following` by one `on_stop_following`, before the next start,
    # `on_error` or `on_shutdown`: a listener may count on the pairs.

    def on_leader_start(self, term: int) -> None:
        """This node leads `term`, and the term's first entry is applied: every entry this
        state machine has seen is committed, and `apply` here is served at once."""

    def on_leader_stop(self, term: int) -> None:
        """This node stopped leading `term` (it stepped down, entered ERROR or is stopping).
        The futures of commands it had not applied yet failed before this call."""

    def on_start_following(self, leader_id: str, term: int) -> None:
        """This node follows `leader_id` in `term`: it accepted the leader's first message of
        the term. Called as soon as that happens, not in log order."""

    def on_stop_following(self, leader_id: str, term: int) -> None:
        """This node no longer follows `leader_id` of `term` (a new term or leader, a
        candidacy, ERROR or stop)."""

    def on_configuration_committed(self, conf: Configuration, index: int) -> None:
        """The configuration entry at `index` (`conf.peers`: the voters, `conf.learners`;
        during a joint change also `conf.old_peers`; `conf.as_dict()`) is committed and
        applied: called in log order, after the `on_apply` of every command before it.
        Every leader's first entry is a configuration entry, so this is called at least
        once per term, mostly with the same configuration; loading a snapshot calls it with
        the snapshot's configuration.

        A follower that installs the leader's snapshot (it fell behind past the leader's
        compacted log) gets `on_snapshot_load` instead of `on_apply` for the entries that
        snapshot covers: count state, not calls."""

    def on_error(self, error: BaseException) -> None:
        """The node entered ERROR (after which nothing more is applied)."""

    def on_shutdown(self) -> None:
        """The node is stopping: the last call."""
