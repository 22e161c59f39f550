"""The base of every Raft actor: typed message dispatch and an injectable self-mailbox.

A subclass declares one handler per message type:

    class LogManager(RaftActor):
        @handles(PersistLeaderEntries)
        def on_persist_leader_entries(self, msg: PersistLeaderEntries) -> None: ...

`on_receive` looks the handler up by the message's exact type. A message nobody handles is
logged once per type and dropped, never a crash.

The same class runs three ways: started as a pykka thread (production), or constructed without a
thread and driven by calling `receive` directly (unit tests through `actors.testing.ActorHarness`,
and the simulator). For the latter, `self_mailbox` (where timers and the actor's own deferred work
are sent) can be rebound to the driver's queue with `bind_self`.

Supervision (no silently dead actor): an exception escaping a handler, `startup` or `shutdown`
does not stop the actor (pykka would stop it, and its mailbox would swallow every later message
while the rest of the peer carried on). Instead the actor logs it, calls its own `enter_error`
(stop doing work, promise nothing more) and tells its supervisor, the peer's Node, a
`FatalError`: the Node then moves the whole peer to ERROR (see node.py). The actor keeps
draining its mailbox in its error mode, so messages carrying futures are still answered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pykka

from actors.clock import Clock, TimerHandle
from actors.errors import NodeFailedError
from actors.futures import fail_all
from actors.mailbox import Mailbox
from actors.messages import FatalError

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
    # Daemon threads: a program that ends (or dies of an exception) without RaftNode.stop() must
    # still exit. RaftNode stops every node still running at interpreter exit (atexit, which
    # runs before daemon threads are killed), so that exit is a clean stop, not a crash.
    use_daemon_thread = True
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

    def __init__(self, supervisor: Mailbox | None = None) -> None:
        super().__init__()
        self.self_mailbox: Mailbox = self.actor_ref
        # Where FatalError goes: the peer's Node (the Node itself reports to its own mailbox).
        self.supervisor = supervisor
        self.crashed = False  # an exception escaped one of this actor's handlers

    def bind_self(self, mailbox: Mailbox) -> None:
        """Redirect messages this actor sends itself (timers, deferred work) to `mailbox`.
        Only for drivers that run the actor without its pykka thread."""
        self.self_mailbox = mailbox

    def tell_self(self, message: Any) -> None:
        """Tell ourselves `message` from another thread (a timer, a completion callback). Once
        this actor stopped it is dropped quietly: whatever it reports is moot."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.self_mailbox.tell(message)

    def tell_later(self, clock: Clock, delay: float, message: Any) -> TimerHandle:
        """Tell ourselves `message` after `delay` (a timer), as `tell_self`."""
        return clock.call_later(delay, lambda: self.tell_self(message))

    def receive(self, message: Any) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            return self.on_unknown_message(message)
        try:
            return handler(self, message)
        except Exception as exc:
            self._crash(type(message).__name__, exc, message)
            return None

    def on_receive(self, message: Any) -> Any:
        return self.receive(message)

    # -- lifecycle and supervision -------------------------------------------------------------

    def on_start(self) -> None:
        """pykka's hook (and the drivers'): runs `startup` under supervision."""
        try:
            self.startup()
        except Exception as exc:
            self._crash("startup", exc)

    def on_stop(self) -> None:
        """pykka's hook (and the drivers'): runs `shutdown` under supervision."""
        try:
            self.shutdown()
        except Exception as exc:
            self._crash("shutdown", exc)

    def startup(self) -> None:
        """Runs first, on the actor's thread. Override instead of on_start."""

    def shutdown(self) -> None:
        """Runs last, on the actor's thread. Override instead of on_stop."""

    def enter_error(self, reason: str) -> None:
        """Stop doing work and promise nothing more, but keep answering: the peer is in ERROR.
        Called on a crash of this actor and when the Node says so (EnterError). Idempotent."""

    def report_fatal(self, reason: str) -> None:
        """Tell the supervisor that this peer cannot go on; it moves the peer to ERROR."""
        if self.supervisor is None:
            log.error("%s: fatal, and no supervisor to tell: %s", type(self).__name__, reason)
            return
        try:
            self.supervisor.tell(FatalError(type(self).__name__, reason))
        except pykka.ActorDeadError:
            pass  # stopping: moot
        except RuntimeError:  # a slot not bound yet: the peer is still being assembled
            log.error("%s: fatal before the peer was wired: %s", type(self).__name__, reason)

    def _crash(self, during: str, exc: Exception, message: Any = None) -> None:
        reason = f"{type(exc).__name__} in {type(self).__name__} ({during}): {exc}"
        log.error("%s; the peer enters ERROR", reason, exc_info=exc)
        self.crashed = True
        # The message that crashed is answered too: no future is left pending for ever. Its
        # command may or may not have been appended before the crash: outcome unknown.
        orphaned = [*getattr(message, "futures", ()), getattr(message, "reply", None)]
        error = NodeFailedError(f"the peer entered ERROR: {reason}", outcome_unknown=True)
        fail_all([f for f in orphaned if f is not None], error)
        try:
            self.enter_error(reason)
        except Exception:
            log.exception("%s: enter_error raised too", type(self).__name__)
        self.report_fatal(reason)

    def on_unknown_message(self, message: Any) -> None:
        kind = type(message)
        if kind not in self._unknown_logged:
            self._unknown_logged.add(kind)
            log.warning("%s: no handler for %s; dropped (logged once)", type(self).__name__, kind)
