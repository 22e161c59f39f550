"""Fixtures for the ZeroMQ transport integration tests: peer processes (peer_process.py run as
a subprocess), in-process transports and raw sockets - each stopped or closed in teardown, also
when the test fails. Ports are always chosen by the OS (bind to port 0) and reported back."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import zmq

from actors.dispatcher import Dispatcher
from actors.wait import wait_until
from transport.base import Deliver
from transport.codec import decode, encode
from transport.rpc import RequestVoteRequest, RpcMessage
from transport.zmq_transport import ZmqTransport

HELPER = Path(__file__).with_name("peer_process.py")
ROOT = Path(__file__).resolve().parents[3]
TIMEOUT = 20.0  # generous: the machine may be busy; nothing waits this long when things work
POLL = 0.05  # how long one look at an event queue waits before the deadline is checked again


class PeerProcess:
    """A peer_process.py subprocess: commands go to its stdin, events come from its stdout
    (parsed by a reader thread), its log goes to a file."""

    def __init__(self, peer_id: str, log_path: Path, *args: str) -> None:
        self.peer_id = peer_id
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, str(HELPER), "--id", peer_id, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.suspended = False
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._received: list[RpcMessage] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"reader-{peer_id}", daemon=True)
        self._reader.start()
        self.endpoint: str = self.wait_event("bound")["endpoint"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:  # a line cut short by a kill at teardown
                continue
            if event["event"] == "received":
                with self._changed:
                    self._received.append(decode(bytes.fromhex(event["frame"])))
                    self._changed.notify_all()
            else:
                self._events.put(event)
        self._events.put(None)  # EOF

    def command(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.process.stdin.flush()

    def add_peer(self, peer_id: str, address: str) -> None:
        self.command("add_peer", id=peer_id, address=address)

    def send(self, to: str, message: RpcMessage) -> None:
        self.command("send", to=to, frame=encode(message).hex())

    def stats(self) -> dict[str, Any]:
        self.command("stats")
        return self.wait_event("stats")

    def wait_event(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        def next_of_kind() -> dict[str, Any] | None:
            try:
                event = self._events.get(timeout=POLL)
            except queue.Empty:
                return None
            if event is None:
                pytest.fail(f"{self.peer_id} exited; log:\n{self.log_path.read_text()}")
            return event if event["event"] == kind else None

        return wait_until(next_of_kind, f"a {kind!r} event from {self.peer_id}", timeout)

    def received(self) -> list[RpcMessage]:
        with self._changed:
            return list(self._received)

    def wait_received(
        self, predicate: Callable[[RpcMessage], bool], timeout: float = TIMEOUT
    ) -> RpcMessage:
        """The first received message satisfying `predicate`, waiting for it if need be."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._received:
                    if predicate(message):
                        return message
                remaining = end - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"{self.peer_id} did not receive the expected message")
                self._changed.wait(remaining)

    def suspend(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.suspended = True

    def stop(self) -> None:
        """Stop the process (politely, then by force) and release everything. Idempotent."""
        try:
            if self.process.poll() is None:
                if self.suspended:  # frozen on purpose, with a backlog: no graceful stop
                    self.process.kill()
                else:
                    with contextlib.suppress(OSError):  # stdin closed: the process is gone
                        self.command("stop")
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._reader.join(10)
            self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., PeerProcess]]:
    """Factory of PeerProcess; every process started is stopped at teardown."""
    started: list[PeerProcess] = []

    def start(peer_id: str, *args: str) -> PeerProcess:
        peer = PeerProcess(peer_id, tmp_path / f"{peer_id}.log", *args)
        started.append(peer)
        return peer

    try:
        yield start
    finally:
        for peer in reversed(started):
            peer.stop()


def vote(sender: str, term: int = 1) -> RequestVoteRequest:
    """A pre-vote-free RequestVote from `sender`: the message these tests exchange."""
    return RequestVoteRequest(term, sender, 0, 0, False)


class Inbox:
    """A deliver callback collecting messages in a thread-safe queue."""

    def __init__(self) -> None:
        self.queue: queue.Queue[RpcMessage] = queue.Queue()

    def __call__(self, message: RpcMessage) -> None:
        self.queue.put(message)

    def poll_for(
        self, predicate: Callable[[RpcMessage], bool], timeout: float
    ) -> RpcMessage | None:
        """The next message satisfying `predicate` (others are discarded), or None after
        `timeout` seconds."""
        end = time.monotonic() + timeout
        while (remaining := end - time.monotonic()) > 0:
            try:
                message = self.queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if predicate(message):
                return message
        return None

    def wait_for(
        self, predicate: Callable[[RpcMessage], bool], timeout: float = TIMEOUT
    ) -> RpcMessage:
        message = self.poll_for(predicate, timeout)
        if message is None:
            pytest.fail(f"expected message not delivered within {timeout} s")
        return message


@pytest.fixture(params=["own_thread", "hosted"])
def local(request: pytest.FixtureRequest) -> Iterator[Callable[..., ZmqTransport]]:
    """Factory of started in-process ZmqTransports (bound to 127.0.0.1, port 0); all stopped
    at teardown. Every test using it runs twice: with the I/O on the transport's own thread,
    and hosted on a Dispatcher of its own (ZmqTransport.host_on), as a RaftNode runs it."""
    transports: list[ZmqTransport] = []
    dispatchers: list[Dispatcher] = []

    def make(peer_id: str, deliver: Deliver, **options: Any) -> ZmqTransport:
        transport = ZmqTransport(peer_id, "tcp://127.0.0.1:0", **options)
        transports.append(transport)
        if request.param == "hosted":
            dispatchers.append(Dispatcher(f"host-{peer_id}"))
            transport.host_on(dispatchers[-1])
        transport.start(deliver)
        return transport

    try:
        yield make
    finally:
        for transport in transports:
            transport.stop()
        for dispatcher in dispatchers:
            dispatcher.stop(TIMEOUT)


@pytest.fixture
def raw_dealer() -> Iterator[Callable[..., zmq.Socket[Any]]]:
    """Factory of raw DEALER sockets with a given routing id, connected to an endpoint (after
    `configure(socket)`, if given: e.g. CURVE keys); the fixture keeps them referenced (a socket
    garbage-collected unclosed warns) and closes them and their context at teardown."""
    context: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def make(
        endpoint: str,
        routing_id: bytes,
        configure: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> zmq.Socket[Any]:
        dealer = context.socket(zmq.DEALER)
        sockets.append(dealer)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, routing_id)
        if configure is not None:
            configure(dealer)
        dealer.connect(endpoint)
        return dealer

    try:
        yield make
    finally:
        for socket in sockets:
            socket.close(linger=0)
        context.term()


def request_until_answered(
    send: Callable[[], None], answered: Callable[[float], bool], timeout: float = TIMEOUT
) -> None:
    """Connections come up asynchronously and IMMEDIATE drops frames until they do: resend
    until an answer arrives (waiting up to 0.2 s per try, never sleeping blindly)."""

    def send_and_wait() -> bool:
        send()
        return answered(0.2)

    wait_until(send_and_wait, "an answer", timeout)


def recv_with_timeout(socket: zmq.Socket[Any], timeout: float) -> list[bytes] | None:
    if socket.poll(int(timeout * 1000), zmq.POLLIN):
        return socket.recv_multipart()
    return None
