"""The production transport: msgpack frames over ZeroMQ ROUTER/DEALER sockets.

Topology (one process = one peer):

- one ROUTER bound at the peer's address receives everything addressed to this peer: requests
  and responses from other peers (each peer's DEALER connects with routing id = its peer id) and
  requests from clients (a client's DEALER connects with routing id = its client id);
- one DEALER per remote peer, connected to that peer's ROUTER, sends everything this peer sends
  to it (requests and responses alike);
- replies to clients go back through the ROUTER, addressed by the client's routing id.

So `send(to, msg)` uses the DEALER of `to` when `to` is a known peer, and otherwise the ROUTER,
treating `to` as the routing id of a connected client.

Threads (docs/DESIGN.md, principle 2 and "Threads"): one I/O thread, started by `start`, owns
every ZeroMQ socket of the transport: it creates them, is the only one to touch them and closes
them. With `host_on(dispatcher)` before `start`, that thread is the dispatcher's
(actors.dispatcher; transport.base.IoHost): the dispatcher waits in this transport's poll and
runs its loop a step at a time between actor turns, so inbound messages reach the actors there
and what they send leaves without a thread wake-up. Other threads
(actors) call `send`, which encodes the message on the caller's thread, appends (destination,
frame) to a deque and wakes the I/O thread through an eventfd (a pipe where there is no
eventfd). A wake-up is written only when none is pending, so a burst of sends costs one
syscall, and the I/O thread drains the whole deque per wake-up (docs/DESIGN.md, principle 5:
batching).
`send` never blocks: when the deque is over its bound, or a peer's DEALER is at its high-water
mark, or the peer is not connected (IMMEDIATE), the frame is dropped and counted - Raft
tolerates loss, and a down or slow peer never stalls the others.

Inbound, the I/O thread drains every frame the ROUTER has per wake-up, decodes and validates it
(transport.codec), checks that the message's `sender` is the routing id it arrived with, and
calls `deliver(message)` on the I/O thread. A frame failing any check is counted (by reason),
logged (rate-limited, first per source) and dropped (docs/DESIGN.md, principle 6).

With `security` (transport.security.PeerSecurity, `--keys DIR`) every connection is CurveZMQ:
the ROUTER is a CURVE server whose ZAP handler accepts only the directory's keys and labels
each connection with the key's holder; the DEALERs authenticate with this peer's key and check
each remote peer's. Every inbound message must then also pass `PeerSecurity.authorize` for the
label of the connection it came over (a client key cannot speak as a peer). Handshakes that
fail (no CURVE, an unknown key) are counted from the ROUTER's monitor socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from zmq.utils.monitor import recv_monitor_message

from transport.base import Deliver, Drained, Failure, IoHost
from transport.codec import DEFAULT_MAX_FRAME_SIZE, decode, encode
from transport.errors import BindError, DecodeError, EncodeError, TransportError
from transport.rpc import AdminRequest, ClientResponse, ClientStatus, RpcMessage
from transport.security import KeyDirectoryError, PeerSecurity

__all__ = ["TransportStats", "ZmqTransport", "peer_address"]

log = logging.getLogger(__name__)

DEFAULT_SEND_HWM: Final = 1024
"""Frames a DEALER queues for its peer before sends to it are dropped. A replicator keeps up to
256 AppendEntries in flight; the rest is heartbeats, votes and slack."""

DEFAULT_MAX_QUEUED: Final = 65536
"""Frames `send` may queue for the I/O thread before further sends are dropped."""

_OUTBOUND_BATCH: Final = 4096  # frames sent per loop iteration before polling inbound again
_INBOUND_BATCH: Final = 1024  # frames received per loop iteration before sending again
_POLL_MS: Final = 1000  # idle poll timeout; every real event wakes the loop earlier
_HEARTBEAT_IVL_MS: Final = 1000  # ZMTP PING on idle connections...
_HEARTBEAT_TIMEOUT_MS: Final = 3000  # ...and the connection is dropped without an answer
# TCP keepalive on inbound connections (seconds): idle this long, then probes this often,
# this many times, before the kernel drops a connection whose other end vanished.
_KEEPALIVE_IDLE_S, _KEEPALIVE_INTVL_S, _KEEPALIVE_CNT = 10, 2, 3
_DELIVER_ERROR_LOG_INTERVAL: Final = 10.0
_START_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 10.0


class _HostedLoop:
    """The _IoLoop as an IoHost's HostedIo (transport.base): stepped on the host's thread."""

    def __init__(
        self, transport: ZmqTransport, host: IoHost, context: zmq.Context[Any], loop: _IoLoop
    ) -> None:
        self.t = transport
        self.host = host
        self.context = context
        self.loop = loop
        self.waker = loop.waker
        self.closed = False

    def poll(self, block: bool) -> None:
        if not self.t._stopping:
            try:
                self.loop.step(_POLL_MS if block else 0)
            except Exception as exc:  # a bug: stop the transport, never the host
                self.t._loop_failed(exc)
                self.t._stopping = True
        if self.t._stopping:
            self.close()

    def wake(self) -> None:
        self.waker.wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.set_io(None)
            self.t._tear_down(self.context, self.loop)


def peer_address(peer_id: str) -> str:
    """The ZeroMQ address of a "host:port" peer id."""
    return f"tcp://{peer_id}"


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of a ZmqTransport's counters."""

    frames_in: int  # frames received on the ROUTER (valid or not)
    frames_out: int  # frames handed to ZeroMQ for sending
    delivered: int  # valid messages passed to deliver
    bad_frames: int  # frames dropped as invalid: undecodable, wrong shape or spoofed sender
    dropped_sends: int  # frames dropped on the way out: queue full, HWM, unreachable, stopped
    deliver_errors: int  # exceptions raised by the deliver callback (logged, then ignored)
    bad_frames_by_reason: dict[str, int] = field(default_factory=dict)  # BAD_* -> count
    refused_connections: dict[str, int] = field(default_factory=dict)  # REFUSED_* -> count


# Reasons a frame is dropped as bad (TransportStats.bad_frames_by_reason, a metric's label).
BAD_MALFORMED: Final = "malformed"  # not one frame, or not a valid message
BAD_SPOOFED: Final = "spoofed_sender"  # `sender` is not the routing id it came with
BAD_UNAUTHORIZED: Final = "unauthorized"  # the connection's key may not send this (keys only)
BAD_ON_DEALER: Final = "on_dealer"  # something arrived on a DEALER, where nothing should

# Why a connection was refused in its handshake (keys only; from the ROUTER's monitor).
# A side without keys shows as no_curve, or as other when it hung up before we noticed the
# mismatch (which side notices first is a race); a failure counts once per connection attempt.
REFUSED_NO_CURVE: Final = "no_curve"  # the other side does not speak CURVE (no keys)
REFUSED_BAD_KEY: Final = "bad_key"  # a key this cluster does not know (ZAP refused it)
REFUSED_OTHER: Final = "other"  # the handshake failed without detail
_REFUSAL_TEXT: Final = {
    REFUSED_NO_CURVE: "the other side has no CURVE key (a client or peer run without --keys?)",
    REFUSED_BAD_KEY: "a key that is not in this cluster's key directory",
    REFUSED_OTHER: "the handshake failed",
}
_REFUSALS: Final[dict[int, str]] = {
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): REFUSED_NO_CURVE,
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): REFUSED_BAD_KEY,
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): REFUSED_OTHER,
}


class _Waker:
    """Wakes the I/O thread's poll from other threads: an eventfd (or a pipe), readable while a
    wake-up is pending.

    `wake` runs on any thread, `clear` and `fileno` on the I/O thread. `_pending` (a plain bool,
    made safe by the GIL and by the order of operations) suppresses redundant writes: a sender
    appends to the queue BEFORE calling wake, and the I/O thread calls clear BEFORE draining the
    queue, so any frame appended after the drain began either is seen by that drain or finds
    `_pending` false and writes a new wake-up. The lock only protects the fd against being
    closed (and its number reused) during a write.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = False
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        return self._read_fd

    def wake(self) -> None:
        if self._pending:
            return
        self._pending = True
        with self._lock:
            if self._write_fd >= 0:
                # Full pipe / saturated eventfd: a wake-up is pending anyway.
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write_fd, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def clear(self) -> None:
        """I/O thread: consume pending wake-ups; call before draining the queue."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)
        self._pending = False

    def close(self) -> None:
        with self._lock:
            for fd in {self._read_fd, self._write_fd}:
                if fd >= 0:
                    os.close(fd)
            self._read_fd = self._write_fd = -1


class _BadFrameLog:
    """Rate-limited logging of bad frames (I/O thread only).

    The first bad frame from each source is logged; later ones from that source at most once
    per `interval` seconds, with the number suppressed meanwhile. Because an attacker can vary
    its routing id, there is also a global budget of `burst` lines per interval, and at most
    `max_sources` sources are remembered (the table is reset when full).
    """

    def __init__(
        self,
        local_id: str,
        interval: float = 60.0,
        burst: int = 20,
        max_sources: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local_id = local_id
        self._interval = interval
        self._burst = burst
        self._max_sources = max_sources
        self._clock = clock
        self._sources: dict[bytes, list[float | int]] = {}  # id -> [last_logged, suppressed]
        self._window_start = -float("inf")
        self._window_lines = 0

    def report(self, source: bytes, reason: str, what: str = "dropped bad frame from") -> None:
        now = self._clock()
        state = self._sources.get(source)
        if state is not None and now - state[0] < self._interval:
            state[1] += 1
            return
        if now - self._window_start >= self._interval:
            self._window_start, self._window_lines = now, 0
        self._window_lines += 1
        if self._window_lines > self._burst:
            if self._window_lines == self._burst + 1:
                log.warning(
                    "%s: many sources sending bad frames; not logging more for %.0f s",
                    self._local_id,
                    self._interval,
                )
            return
        suppressed = int(state[1]) if state is not None else 0
        if state is None and len(self._sources) >= self._max_sources:
            self._sources.clear()
        self._sources[source] = [now, 0]
        log.warning(
            "%s: %s %r: %s%s",
            self._local_id,
            what,
            source[:64],
            reason,
            f" ({suppressed} more since last logged)" if suppressed else "",
        )


class ZmqTransport:
    """The ZeroMQ implementation of transport.base.Transport (see the module docstring).

    `local_id` is this peer's id ("host:port"; it is also the routing id of its DEALERs).
    `bind` is the ZeroMQ address of its ROUTER, e.g. "tcp://127.0.0.1:7001" (port 0 binds an
    ephemeral port; read `bound_port` after start()). `peers` is {peer_id: address} or an
    iterable of "host:port" peer ids (address "tcp://host:port"); `local_id` itself is skipped
    so the whole cluster list may be passed. `context` is used (and not terminated) if given,
    else the transport creates and terminates its own.

    Single-use: start() once, stop() once (idempotent). Thread-safe: every public method may be
    called from any thread; `deliver` is called on the I/O thread.
    """

    def __init__(
        self,
        local_id: str,
        bind: str,
        peers: Mapping[str, str] | Iterable[str] = (),
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_hwm: int = DEFAULT_SEND_HWM,
        max_queued: int = DEFAULT_MAX_QUEUED,
        reconnect_ivl_ms: int = 100,
        reconnect_ivl_max_ms: int = 2000,
        context: zmq.Context[Any] | None = None,
        security: PeerSecurity | None = None,
    ) -> None:
        if not local_id:
            raise ValueError("local_id must not be empty")
        if isinstance(peers, str):
            raise TypeError("peers must be a mapping or an iterable of ids, not one str")
        self._local_id = local_id
        self._identity = local_id.encode()
        self._bind = bind
        self._max_frame_size = max_frame_size
        self._send_hwm = send_hwm
        self._max_queued = max_queued
        self._reconnect_ivl_ms = reconnect_ivl_ms
        self._reconnect_ivl_max_ms = reconnect_ivl_max_ms
        self._context = context
        self._owns_context = context is None
        self._security = security

        self._lock = threading.Lock()  # guards _peers, _state, _dropped_early
        self._peers: dict[str, str] = {}  # wanted peers: id -> address (the I/O thread follows)
        items = (
            peers.items() if isinstance(peers, Mapping) else ((p, peer_address(p)) for p in peers)
        )
        for peer_id, address in items:
            if peer_id != local_id:
                self._peers[peer_id] = address
        self._state = "new"  # new -> running -> stopped (or new -> stopped)
        self._dropped_early = 0  # drops counted outside the I/O thread (queue full, stopped)

        # Handed from callers to the I/O thread, in call order. Invariant: only the I/O thread
        # pops. (to, frame) is a frame to send; (peer_id, None) says "make the DEALER of
        # peer_id match _peers" - in the same queue, so that a send() issued after
        # add_peer()/remove_peer() is routed by the new membership.
        self._queue: deque[tuple[str, bytes | None]] = deque()
        self._waker: _Waker | None = None  # created by start()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._host: IoHost | None = None  # runs the I/O instead of _thread (host_on)
        self._closed = threading.Event()  # hosted: the host's thread has closed everything
        self._io_ident = -1
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._deliver: Deliver | None = None
        self._on_failure: Failure | None = None
        self._on_drained: Drained | None = None
        self._bound_endpoint = ""

        # I/O-thread-only state (written by the I/O thread only; read racily by `stats`).
        self._frames_in = 0
        self._frames_out = 0
        self._delivered = 0
        self._bad_frames = 0
        self._bad_by_reason: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._dropped_io = 0
        self._deliver_errors = 0
        self._deliver_error_logged = -float("inf")
        self._bad_log = _BadFrameLog(local_id)

    # ---- properties -------------------------------------------------------------------------

    @property
    def local_id(self) -> str:
        return self._local_id

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def bound_endpoint(self) -> str:
        """The address the ROUTER actually bound, e.g. "tcp://127.0.0.1:40123" (after start)."""
        if not self._bound_endpoint:
            raise TransportError("not bound yet: call start() first")
        return self._bound_endpoint

    @property
    def bound_port(self) -> int:
        """The TCP port the ROUTER actually bound (after start; useful with port 0)."""
        return int(self.bound_endpoint.rsplit(":", 1)[1])

    @property
    def peers(self) -> dict[str, str]:
        """A copy of the known peers: {peer_id: address}."""
        with self._lock:
            return dict(self._peers)

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (any thread; each counter is read atomically)."""
        with self._lock:
            dropped_early = self._dropped_early
        return TransportStats(
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            delivered=self._delivered,
            bad_frames=self._bad_frames,
            dropped_sends=self._dropped_io + dropped_early,
            deliver_errors=self._deliver_errors,
            bad_frames_by_reason=dict(self._bad_by_reason),
            refused_connections=dict(self._refused),
        )

    # ---- membership -------------------------------------------------------------------------

    def add_peer(self, peer_id: str, address: str | None = None) -> None:
        """Send to `peer_id` through a DEALER connected to `address` (default
        "tcp://<peer_id>"); replaces the address of a known peer. Any thread."""
        if peer_id == self._local_id:
            return
        with self._lock:
            self._peers[peer_id] = address if address is not None else peer_address(peer_id)
        self._reconcile_later(peer_id)

    def ensure_peer(self, peer_id: str) -> None:
        """add_peer(peer_id) unless it is known (or us): a known peer keeps its address."""
        with self._lock:
            if peer_id == self._local_id or peer_id in self._peers:
                return
        self.add_peer(peer_id)

    def remove_peer(self, peer_id: str) -> None:
        """Forget `peer_id` and close its DEALER (frames still queued for it are lost). Any
        thread. Afterwards `send(peer_id, ...)` routes to a client of that id, if any."""
        with self._lock:
            self._peers.pop(peer_id, None)
        self._reconcile_later(peer_id)

    def _reconcile_later(self, peer_id: str) -> None:
        self._queue.append((peer_id, None))  # never dropped, whatever the queue's length
        if threading.get_ident() == self._io_ident:
            return
        waker = self._waker
        if waker is not None:
            waker.wake()

    # ---- Transport protocol -----------------------------------------------------------------

    def host_on(self, host: IoHost) -> None:
        """Run the I/O on `host`'s thread rather than a thread of its own (before `start`). If
        the host already runs another transport's I/O, `start` starts a thread as usual."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"transport {self._local_id} already {self._state}")
        self._host = host

    def start(
        self, deliver: Deliver, on_failure: Failure | None = None, on_drained: Drained | None = None
    ) -> None:
        """Bind the ROUTER, connect the DEALERs and start the I/O thread; returns once bound.
        `on_drained()` runs on the I/O thread after each burst of deliveries.

        Raises BindError (naming the address) if the address cannot be bound, RuntimeError if
        started twice or after stop().
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"transport {self._local_id} already {self._state}")
            self._state = "running"
        self._deliver = deliver
        self._on_failure = on_failure
        self._on_drained = on_drained
        self._waker = _Waker()
        host = self._host
        if host is not None and host.claim_io():
            host.call_soon(self._start_hosted)
        else:
            self._host = None
            self._thread = threading.Thread(
                target=self._run, name=f"zmq-transport-{self._local_id}", daemon=True
            )
            self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            self.stop()
            raise TransportError(f"transport {self._local_id}: I/O thread did not start")
        if self._start_error is not None:
            self.stop()
            raise self._start_error

    def send(self, to: str, message: RpcMessage) -> None:
        """Queue `message` for peer or connected client `to`; any thread, never blocks.

        Encodes on the caller's thread (raising EncodeError for a message that cannot go on the
        wire or is larger than max_frame_size: programming errors). Anything else - transport
        stopped, queue full, peer down or slow, client gone - drops the frame and counts it.
        """
        frame = encode(message)
        if len(frame) > self._max_frame_size:
            raise EncodeError(
                f"{type(message).__name__} of {len(frame)} bytes exceeds max_frame_size "
                f"{self._max_frame_size}"
            )
        if threading.get_ident() == self._io_ident:
            # Called from deliver, on the I/O thread: the loop drains the queue right after
            # inbound processing, no wake-up needed.
            self._queue.append((to, frame))
            return
        if self._stopping or len(self._queue) >= self._max_queued:
            with self._lock:
                self._dropped_early += 1
            return
        self._queue.append((to, frame))
        waker = self._waker
        if waker is not None:  # before start() the thread drains the queue when it starts
            waker.wake()

    def stop(self) -> None:
        """Stop the I/O thread, which closes every socket (linger 0) and the context if owned.
        Idempotent; any thread (from deliver, on the I/O thread, it does not wait)."""
        with self._lock:
            previous, self._state = self._state, "stopped"
        if previous == "stopped":
            return
        self._stopping = True
        thread, waker = self._thread, self._waker
        if waker is None:  # never started: nothing was created
            return
        waker.wake()  # the loop looks at _stopping after every wake-up
        if threading.get_ident() == self._io_ident:
            return  # the loop sees _stopping after this deliver returns, and cleans up
        if thread is not None:
            thread.join(_STOP_TIMEOUT)
            stopped = not thread.is_alive()
        else:  # hosted: the host's thread closes the sockets at its next step
            stopped = self._closed.wait(_STOP_TIMEOUT)
        if not stopped:
            log.error("%s: I/O thread did not stop within %.0f s", self._local_id, _STOP_TIMEOUT)

    # ---- the I/O thread ---------------------------------------------------------------------

    def _run(self) -> None:
        """The I/O thread's body: set up the sockets, loop, and always close everything."""
        setup = self._set_up()
        if setup is None:
            return
        context, loop = setup
        try:
            loop.run()
        except Exception as exc:  # a bug: never let the thread die silently
            self._loop_failed(exc)
        finally:
            self._tear_down(context, loop)

    def _start_hosted(self) -> None:
        """On the host's thread (call_soon): set up the sockets and attach to the host."""
        host = self._host
        assert host is not None
        setup = self._set_up()
        if setup is None:
            host.set_io(None)  # release the slot
            return
        host.set_io(_HostedLoop(self, host, *setup))

    def _set_up(self) -> tuple[zmq.Context[Any], _IoLoop] | None:
        """On the I/O thread: the context and the sockets, or None with _start_error set. Either
        way `start` is released."""
        self._io_ident = threading.get_ident()
        waker = self._waker
        assert waker is not None and self._deliver is not None
        context: zmq.Context[Any] | None = None
        try:
            context = self._context if self._context is not None else zmq.Context()
            loop = _IoLoop(self, context, waker, self._deliver)
        except Exception as exc:
            self._start_error = exc
            self._tear_down(context, None)
            return None
        finally:
            self._started.set()
        # Connect the initial peers first, before any frame send() queued before start().
        self._queue.extendleft((peer_id, None) for peer_id in self.peers)
        return context, loop

    def _loop_failed(self, exc: Exception) -> None:
        log.exception("%s: I/O thread failed; transport stopped", self._local_id)
        if self._on_failure is not None:
            self._on_failure(f"transport I/O thread failed: {type(exc).__name__}: {exc}")

    def _tear_down(self, context: zmq.Context[Any] | None, loop: _IoLoop | None) -> None:
        """On the I/O thread, once: close every socket, the waker and an owned context."""
        self._stopping = True
        self._io_ident = -1  # thread idents are reused once a thread has ended
        if loop is not None:
            loop.close()
        if self._waker is not None:
            self._waker.close()
        if self._owns_context and context is not None:
            context.term()
        self._closed.set()


class _IoLoop:
    """Everything the I/O thread owns - the sockets and the poller - and what it does with
    them. Every method runs on the I/O thread (principle 2); the transport's shared state
    (`_queue`, `_peers`, `_stopping`) is how other threads reach it, and the
    transport's counters are written only from here.
    """

    def __init__(
        self, transport: ZmqTransport, context: zmq.Context[Any], waker: _Waker, deliver: Deliver
    ) -> None:
        self.t = transport
        self.context = context
        self.waker = waker
        self.deliver = deliver
        self.security = transport._security
        # The ZAP handler must be up before the ROUTER accepts anything: libzmq lets every
        # CURVE client in when no handler is bound.
        self.authenticator = (
            self.security.start_authenticator(context) if self.security is not None else None
        )
        self.monitor: zmq.Socket[Any] | None = None
        try:
            self.router = self._make_router()
        except BaseException:
            self._stop_authenticator()
            raise
        # Peer id -> (address, DEALER), and the reverse map for poll results.
        self.dealers: dict[str, tuple[str, zmq.Socket[Any]]] = {}
        self.dealer_ids: dict[zmq.Socket[Any], str] = {}
        # Every socket is polled, DEALERs too although nothing should arrive on them: zmq_poll
        # is what makes libzmq process a socket's internal commands. A DEALER nobody polls
        # never sees the "activate_write" credits of its own pipe, so after about 2 x SNDHWM
        # frames its sends fail with EAGAIN (or stall) even though the peer reads everything.
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.wake_fd = waker.fileno()
        self.poller.register(self.wake_fd, zmq.POLLIN)
        if self.monitor is not None:
            self.poller.register(self.monitor, zmq.POLLIN)

    def _stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def _make_router(self) -> zmq.Socket[Any]:
        t = self.t
        router = self.context.socket(zmq.ROUTER)
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable reply -> EHOSTUNREACH
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer takes its id over
            router.setsockopt(zmq.MAXMSGSIZE, t._max_frame_size)  # disconnects oversenders
            router.setsockopt(zmq.SNDHWM, t._send_hwm)
            # TCP keepalive, not ZMTP heartbeats, reaps inbound connections of peers and
            # clients that vanished without a FIN/RST. libzmq 4.3.5 (and its master as of
            # 2026) aborts the process (`Assertion failed: !_io_error
            # (stream_engine_base.cpp:310)`) when a heartbeat timer fires on a connection
            # whose input had stopped (its pipe full, or handed over to a reconnected peer of
            # the same id) and that then failed: the chaos runner's partitions killed a peer so.
            # Only engines that receive messages stop input, and of ours only the ROUTER's do
            # (peers' DEALERs receive nothing but PINGs), so the DEALERs keep heartbeats.
            router.setsockopt(zmq.TCP_KEEPALIVE, 1)
            router.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_S)
            router.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTVL_S)
            router.setsockopt(zmq.TCP_KEEPALIVE_CNT, _KEEPALIVE_CNT)
            if self.security is not None:
                self.security.configure_server(router)
                events = sum(_REFUSALS)
                self.monitor = router.get_monitor_socket(events)
            try:
                router.bind(t._bind)
            except zmq.ZMQError as exc:
                raise BindError(t._bind, exc.strerror) from exc
            t._bound_endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        except BaseException:
            if self.monitor is not None:
                self.monitor.close(linger=0)
            router.close(linger=0)
            raise
        return router

    def _make_dealer(self, peer_id: str, address: str) -> zmq.Socket[Any]:
        t = self.t
        dealer = self.context.socket(zmq.DEALER)
        try:
            if self.security is not None:
                self.security.configure_client(dealer, peer_id)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.ROUTING_ID, t._identity)
            dealer.setsockopt(zmq.SNDHWM, t._send_hwm)
            dealer.setsockopt(zmq.RCVHWM, 16)  # nothing should arrive here; bound it anyway
            dealer.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer that is not connected
            dealer.setsockopt(zmq.RECONNECT_IVL, t._reconnect_ivl_ms)
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, t._reconnect_ivl_max_ms)
            # ZMTP heartbeats notice a silently dead peer (no RST), so IMMEDIATE drops again.
            dealer.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
            dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
            dealer.connect(address)
        except BaseException:
            dealer.close(linger=0)
            raise
        return dealer

    def close(self) -> None:
        for _, dealer in self.dealers.values():
            dealer.close(linger=0)
        self.dealers.clear()
        self.dealer_ids.clear()
        if self.monitor is not None:
            self.router.disable_monitor()
            self.monitor.close(linger=0)
        self.router.close(linger=0)
        self._stop_authenticator()

    def run(self) -> None:
        """The I/O thread's loop, until the transport stops."""
        t = self.t
        while not t._stopping:
            self.step(_POLL_MS)

    def step(self, timeout_ms: int) -> None:
        """One iteration: send what is queued (frames left over from a batch: do not wait),
        poll for up to `timeout_ms`, apply peer changes, receive everything the ROUTER has (up
        to a batch), then send what that queued, so that replies produced by deliver go out in
        the same iteration."""
        queue = self.t._queue
        if queue and self._send_queued():
            timeout_ms = 0
        router, wake_fd, monitor = self.router, self.wake_fd, self.monitor
        readable = False
        for item, _event in self.poller.poll(timeout_ms):
            if item is router:
                readable = True
            elif item == wake_fd:
                self.waker.clear()  # before draining the queue: see _Waker
            elif item is monitor:
                self._count_refusals()
            else:
                self._discard_inbound(item)
        if readable and self._receive():
            self._drained()
        if queue:
            self._send_queued()

    def _apply_peer_change(self, peer_id: str) -> None:
        """Make the DEALER of `peer_id` match the transport's wanted peers (idempotent)."""
        t = self.t
        with t._lock:
            address = t._peers.get(peer_id)
        current = self.dealers.get(peer_id)
        if current is not None and current[0] == address:
            return
        if current is not None:
            del self.dealers[peer_id]
            del self.dealer_ids[current[1]]
            self.poller.unregister(current[1])
            current[1].close(linger=0)
        if address is not None:
            try:
                dealer = self._make_dealer(peer_id, address)
            except (zmq.ZMQError, KeyDirectoryError) as exc:
                log.error("%s: cannot connect to %s at %s: %s", t._local_id, peer_id, address, exc)
                return
            self.dealers[peer_id] = (address, dealer)
            self.dealer_ids[dealer] = peer_id
            self.poller.register(dealer, zmq.POLLIN)

    def _discard_inbound(self, dealer: zmq.Socket[Any]) -> None:
        """Peers never send to our DEALERs; whatever arrives there is counted as bad."""
        peer_id = self.dealer_ids.get(dealer, "?")
        for _ in range(_INBOUND_BATCH):
            try:
                dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.t._frames_in += 1
            self._bad(
                peer_id.encode(), BAD_ON_DEALER, "unexpected frame on the DEALER to this peer"
            )

    def _count_refusals(self) -> None:
        """Count (and log, rate-limited) the handshakes the ROUTER's monitor reports failed."""
        assert self.monitor is not None
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            reason = _REFUSALS.get(event["event"])
            if reason is None:
                continue
            refused = self.t._refused
            refused[reason] = refused.get(reason, 0) + 1
            # The monitor names only our own endpoint, so the log is rate-limited per reason.
            self.t._bad_log.report(reason.encode(), _REFUSAL_TEXT[reason], "refused connections:")

    def _drained(self) -> None:
        on_drained = self.t._on_drained
        if on_drained is not None:
            try:
                on_drained()
            except Exception:
                self._deliver_failed("on_drained")

    def _receive(self) -> bool:
        """Drain up to _INBOUND_BATCH messages from the ROUTER; validate and deliver each.
        Returns whether it delivered any."""
        t = self.t
        recv_multipart = self.router.recv_multipart
        deliver = self.deliver
        max_frame_size = t._max_frame_size
        security = self.security
        user = ""
        delivered = False
        for _ in range(_INBOUND_BATCH):
            try:
                if security is None:
                    parts = recv_multipart(zmq.NOBLOCK)
                else:  # zero-copy frames carry the connection's User-Id (its key's holder)
                    frames = recv_multipart(zmq.NOBLOCK, copy=False)
                    user = str(frames[-1].get("User-Id"))
                    parts = [f.bytes for f in frames]
            except zmq.Again:
                break
            t._frames_in += 1
            # Invariant: a ROUTER message is [routing id, *frames sent by the peer].
            if len(parts) != 2:
                self._bad(parts[0], BAD_MALFORMED, f"expected 1 frame, got {len(parts) - 1}")
                continue
            source, frame = parts
            try:
                message = decode(frame, max_frame_size)
            except DecodeError as exc:
                self._bad(source, BAD_MALFORMED, str(exc))
                continue
            sender = message.sender
            if sender.encode("utf-8", "replace") != source:
                why = f"{type(message).__name__} claims to come from {sender!r}"
                self._bad(source, BAD_SPOOFED, why)
                continue
            if security is not None:
                refusal = security.authorize(user, message)
                if refusal is not None:
                    self._unauthorized(source, message, refusal)
                    continue
            t._delivered += 1
            delivered = True
            try:
                deliver(message)
            except Exception:
                self._deliver_failed(type(message).__name__)
        return delivered

    def _deliver_failed(self, what: str) -> None:
        """Count and log (at most every _DELIVER_ERROR_LOG_INTERVAL s) a deliver exception;
        called from the except block. The thread carries on: a bug in one actor (or an actor
        that has stopped) must not stop the node's networking."""
        t = self.t
        t._deliver_errors += 1
        now = time.monotonic()
        if now - t._deliver_error_logged >= _DELIVER_ERROR_LOG_INTERVAL:
            t._deliver_error_logged = now
            log.exception(
                "%s: deliver(%s) failed (%d failures so far)",
                t._local_id,
                what,
                t._deliver_errors,
            )

    def _bad(self, source: bytes, kind: str, reason: str) -> None:
        t = self.t
        t._bad_frames += 1
        t._bad_by_reason[kind] = t._bad_by_reason.get(kind, 0) + 1
        t._bad_log.report(source, reason)

    def _unauthorized(self, source: bytes, message: RpcMessage, reason: str) -> None:
        """Drop a message its connection's key may not send. An admin request from a client
        key is answered with a definite error, so the operator learns why at once."""
        self._bad(source, BAD_UNAUTHORIZED, reason)
        if isinstance(message, AdminRequest):
            refusal = ClientResponse(
                message.request_id, ClientStatus.ERROR, message=reason, peer_id=self.t._local_id
            )
            self.t._queue.append((message.client_id, encode(refusal)))

    def _send_queued(self) -> bool:
        """Send up to _OUTBOUND_BATCH queued frames; True if frames remain queued."""
        t = self.t
        queue = t._queue
        popleft = queue.popleft
        dealers = self.dealers
        router_send = self.router.send
        noblock = zmq.NOBLOCK
        sndmore = zmq.SNDMORE | zmq.NOBLOCK
        sent = dropped = 0
        for _ in range(_OUTBOUND_BATCH):
            if not queue:
                break
            to, frame = popleft()
            if frame is None:
                self._apply_peer_change(to)
                continue
            peer = dealers.get(to)
            try:
                if peer is not None:
                    peer[1].send(frame, noblock)
                else:
                    # A client: ROUTER_MANDATORY makes an unknown id raise EHOSTUNREACH, and a
                    # full pipe EAGAIN, on the first part; then nothing was queued.
                    router_send(to.encode(), sndmore)
                    router_send(frame, noblock)
                sent += 1
            except zmq.ZMQError:  # Again (HWM / not connected) or EHOSTUNREACH
                dropped += 1
        t._frames_out += sent
        t._dropped_io += dropped
        return bool(queue)
