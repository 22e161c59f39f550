"""The user's state machine: what FSMCaller applies committed commands to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.snapshot_storage import SnapshotReader, SnapshotWriter


@dataclass(frozen=True, slots=True)
class Command:
    """A committed user command, as the state machine sees it."""

    index: int
    term: int
    data: bytes


class StateMachine:
    """Subclass and override `on_apply`. Every method runs on the FSMCaller's thread, one at a
    time, so an implementation needs no locking of its own.

    Determinism: `on_apply` must depend only on the commands (and the state they built), never
    on time, randomness or the local node, or replicas diverge.
    """

    def on_apply(self, commands: Sequence[Command]) -> list[Any]:
        """Apply a batch of committed commands in log order; return one result per command
        (the result completes the future of the client that proposed it). Raising puts the node
        into ERROR: it stops applying and serving rather than diverge."""
        raise NotImplementedError

    def on_read(self, query: bytes) -> Any:
        """Answer a read (`RaftNode.read`) from the current state, without changing it. Called
        on the FSMCaller's thread between two `on_apply` batches, once the read's index is
        applied. Raising puts the node into ERROR, as for `on_apply`. The default refuses:
        such a state machine is read only through the log (apply a read command)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement on_read")

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

    def on_leader_start(self, term: int) -> None:
        """This node became leader and the first entry of `term` has been applied."""

    def on_leader_stop(self, term: int) -> None:
        """This node stopped being leader of `term`."""

    def on_error(self, error: BaseException) -> None:
        """The node entered ERROR (after which nothing more is applied)."""

    def on_shutdown(self) -> None:
        """The node is stopping."""
