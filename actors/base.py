"""The base of every Raft actor: typed message dispatch and an injectable self-mailbox.

A subclass declares one handler per message type:

    class LogManager(RaftActor):
        @handles(AppendLeaderEntries)
        def on_append_leader_entries(self, msg: AppendLeaderEntries) -> None: ...

`on_receive` looks the handler up by the message's exact type. A message nobody handles is
logged once per type and dropped, never a crash.

The same class runs three ways: started as a pykka thread (production), or constructed without a
thread and driven by calling `receive` directly (unit tests through `actors.testing.ActorHarness`,
and the simulator). For the latter, `self_mailbox` (where timers and the actor's own deferred work
are sent) can be rebound to the driver's queue with `bind_self`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pykka

from actors.clock import Clock, TimerHandle
from actors.mailbox import Mailbox

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_HANDLES_ATTR = "__raft_handles__"


def handles(*message_types: type) -> Callable[[F], F]:
    """Mark a method as the handler of `message_types`."""

    def mark(fn: F) -> F:
        setattr(fn, _HANDLES_ATTR, message_types)
        return fn

    return mark


class RaftActor(pykka.ThreadingActor):
    _handlers: ClassVar[dict[type, Callable[[Any, Any], Any]]] = {}
    _unknown_logged: ClassVar[set[type]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, Callable[[Any, Any], Any]] = {}
        # Walk the MRO base-first so a subclass's handler overrides its parent's.
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                for message_type in getattr(attr, _HANDLES_ATTR, ()):
                    table[message_type] = attr
        cls._handlers = table
        cls._unknown_logged = set()

    def __init__(self) -> None:
        super().__init__()
        self.self_mailbox: Mailbox = self.actor_ref

    def bind_self(self, mailbox: Mailbox) -> None:
        """Redirect messages this actor sends itself (timers, deferred work) to `mailbox`.
        Only for drivers that run the actor without its pykka thread."""
        self.self_mailbox = mailbox

    def tell_later(self, clock: Clock, delay: float, message: Any) -> TimerHandle:
        """Tell ourselves `message` after `delay` (a timer). A timer that fires after this actor
        stopped is dropped quietly: it is moot."""
        mailbox = self.self_mailbox

        def fire() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                mailbox.tell(message)

        return clock.call_later(delay, fire)

    def receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            return self.on_unknown_message(message)
        return handler(self, message)

    def on_receive(self, message: Any) -> Any:
        return self.receive(message)

    def on_unknown_message(self, message: Any) -> None:
        kind = type(message)
        if kind not in self._unknown_logged:
            self._unknown_logged.add(kind)
            log.warning("%s: no handler for %s; dropped (logged once)", type(self).__name__, kind)
