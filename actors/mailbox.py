"""Mailboxes: the only way one actor reaches another.

An actor holds its collaborators as `Mailbox`es, never as objects. In production a mailbox is a
pykka `ActorRef`; in unit tests a `actors.testing.RecordingMailbox`; under the simulator a
scheduler's queue. Actors therefore only ever `tell`: a blocking `ask` between actors would
serialise the pipeline and can deadlock (docs/DESIGN.md, principle 1).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import pykka

log = logging.getLogger(__name__)


class Mailbox(Protocol):
    def tell(self, message: Any) -> None: ...


class MailboxSlot:
    """A mailbox bound after construction, to wire actors that refer to each other.

    The Node needs the LogManager's ref and the LogManager needs the Node's; each is constructed
    with a slot, and the slots are bound once every actor has started, before any message flows.
    A message to an actor that has already stopped is dropped (that only happens during
    shutdown, when every message in flight is moot).

    Thread-safety: `bind` happens-before any `tell` (the starter binds, then lets traffic in).
    """

    __slots__ = ("_name", "_target")

    def __init__(self, name: str, target: Mailbox | None = None) -> None:
        self._name = name
        self._target = target

    def bind(self, target: Mailbox) -> None:
        self._target = target

    def tell(self, message: Any) -> None:
        target = self._target
        if target is None:
            raise RuntimeError(f"mailbox {self._name!r} used before it was bound")
        try:
            target.tell(message)
        except pykka.ActorDeadError:
            log.debug("dropped %s to stopped actor %s", type(message).__name__, self._name)

    def __repr__(self) -> str:
        return f"MailboxSlot({self._name!r})"
