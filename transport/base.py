"""The transport interface: how a peer's actors reach other peers and clients.

Implementations: transport.zmq_transport.ZmqTransport (production) and
transport.memory.MemoryNetwork endpoints (tests only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from transport.rpc import RpcMessage

Failure = Callable[[str], None]
Deliver = Callable[[RpcMessage], None]
"""Called with each decoded, validated inbound message. Runs on the transport's thread: it must
not block (typically it is an ActorRef.tell)."""
Drained = Callable[[], None]
"""Called after each burst of `deliver` calls (everything one wake-up received), on the same
thread: where a receiver that batches (the KV server's proposals) hands its batch on. Every
delivered message is followed by a call, so a batch never waits for later traffic."""


class Transport(Protocol):
    @property
    def local_id(self) -> str: ...

    @property
    def max_frame_size(self) -> int:
        """The largest frame it sends or receives: what one message may hold."""
        ...

    def start(
        self, deliver: Deliver, on_failure: Failure | None = None, on_drained: Drained | None = None
    ) -> None:
        """Begin receiving; every inbound message goes to `deliver`, and `on_drained()` follows
        each burst of them. `on_failure(reason)` is called (once, on the transport's thread) if
        the transport stops working by itself, so that its owner does not go on deaf."""
        ...

    def send(self, to: str, message: RpcMessage) -> None:
        """Queue `message` for peer (or connected client) `to`. Never blocks and never raises
        for an unreachable destination: Raft tolerates loss, so the message may be dropped."""
        ...

    def stop(self) -> None:
        """Stop the I/O thread and close every socket. Idempotent."""
        ...

    def ensure_peer(self, peer_id: str) -> None:
        """From now on send to `peer_id` as a peer (its own connection, its address derived
        from its id), unless it is already known. Membership changes call it for new members;
        any thread, idempotent, cheap for a known peer."""
        ...


class HostedIo(Protocol):
    """A transport's socket loop as one step at a time, run by an IoHost on the host's thread
    (so the host's actors and the transport share one thread and one wait)."""

    def poll(self, block: bool) -> None:
        """Send what is queued; if `block`, wait (about a second at most) until something
        arrives or `wake` is called; deliver what arrived; send what that queued."""
        ...

    def wake(self) -> None:
        """End a blocked `poll` soon. Any thread."""
        ...

    def close(self) -> None:
        """The host is stopping with this still attached: stop the transport (sockets closed)
        on the host's thread."""
        ...


class IoHost(Protocol):
    """A loop that can run one transport's I/O on its thread: actors.dispatcher.Dispatcher.
    The transport claims the slot, then on the host's thread (call_soon) builds its sockets and
    attaches (set_io); it detaches (set_io(None)) on that thread when it stops."""

    def claim_io(self) -> bool: ...

    def call_soon(self, fn: Callable[[], None]) -> None: ...

    def set_io(self, io: HostedIo | None) -> None: ...


@runtime_checkable
class HostableTransport(Protocol):
    """A Transport whose I/O an IoHost may run (ZmqTransport): `host_on(host)` before `start`
    asks it to; a host whose slot is taken leaves the transport on a thread of its own."""

    def host_on(self, host: IoHost) -> None: ...
