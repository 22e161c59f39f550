"""The user's state machine: what FSMCaller applies committed commands to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


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

    def on_leader_start(self, term: int) -> None:
        """This node became leader and the first entry of `term` has been applied."""

    def on_leader_stop(self, term: int) -> None:
        """This node stopped being leader of `term`."""

    def on_error(self, error: BaseException) -> None:
        """The node entered ERROR (after which nothing more is applied)."""

    def on_shutdown(self) -> None:
        """The node is stopping."""
