"""KVClient: the public client of the replicated KV service (its API is the public contract).

    c = KVClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=5.0)
    c.put("k", "v"); c.get("k"); c.delete("k"); c.cas("k", "v", "w"); c.status(); c.close()

It finds the leader itself: it remembers who answered last, follows NOT_LEADER redirect hints,
and moves on to another peer when one is down, slow or not leading, until `timeout` runs out.

Errors:
- ValueError / TypeError: a malformed operation (an empty or oversized key, a non-string
  value), refused before anything is sent.
- ClientTimeout: no definite answer in time. The operation MAY OR MAY NOT have taken effect.
- CommandError: a definite failure (a command the service refuses); nothing was applied.
A leader with too much in flight answers OVERLOADED (nothing done): the client backs off,
doubling a jittered pause, and retries with the same sequence number until `timeout`.

Exactly-once writes: the client has a random id and numbers its writes; a retried write keeps
its sequence number, and the state machine answers a duplicate from its session instead of
applying it twice (Raft dissertation §6.3).

Security: with `keys=DIR` (a directory made by `launcher.py keygen`) every connection is
CurveZMQ, encrypted and authenticated both ways: the client proves it holds a key the cluster
knows (a KVClient uses a client key, an AdminClient an admin key) and checks each peer's. A
cluster run with `--keys` refuses clients without one (they see ClientTimeout).

Thread-safety: a KVClient is safe to share between threads, but it serialises their requests
(one in flight per client, which the exactly-once sessions require). For parallel requests,
use one client per thread.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import zmq

from transport import codec
from transport.errors import DecodeError, TransportError
from transport.kv_protocol import (
    ADMIN_SNAPSHOT,
    ADMIN_TRANSFER_LEADER,
    ANYWHERE,
    CAS,
    CONSISTENCIES,
    DELETE,
    GET,
    LINEARIZABLE,
    PUT,
    KVCommand,
    decode_admin_result,
    decode_command,
    decode_result,
    encode_command,
)
from transport.peers import parse_peer
from transport.rpc import (
    AdminRequest,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    StatusRequest,
    StatusResponse,
)
from transport.security import ADMINS, CLIENTS, ClientSecurity

_NO_LEADER_PAUSE = 0.05  # after every peer said "no leader" (an election is on): wait a little
_OVERLOAD_BACKOFF = (0.005, 0.5)  # first and longest wait after OVERLOADED (doubling, jittered)
_CONNECT_WAIT_MS = 200  # how long a send waits for a connection to a peer to come up


class KVError(TransportError):
    """Base class of KVClient errors."""


class ClientTimeout(KVError):
    """No definite answer in time: the operation may or may not have taken effect."""


class CommandError(KVError):
    """The service refused the operation definitely; it was not applied."""


class KVClient:
    KEY_KINDS: ClassVar[tuple[str, ...]] = (CLIENTS, ADMINS)
    """Where in a key directory this class looks for its own secret key, in order."""

    def __init__(
        self,
        peers: Sequence[str],
        timeout: float = 5.0,
        *,
        attempt_timeout: float | None = None,
        context: zmq.Context[Any] | None = None,
        keys: Path | str | None = None,
        read_from: str = "leader",
    ) -> None:
        """`read_from`: "leader" sends every request to the leader; "any" spreads gets over
        every peer (round robin) - each still linearizable (a follower asks the leader for a
        read index and answers from its own state once it has applied it) unless the get
        asks for less."""
        if not peers:
            raise ValueError("KVClient needs at least one peer")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        for peer in peers:
            parse_peer(peer)  # a clear ValueError for a malformed address
        self.peers = list(peers)
        if read_from not in ("leader", "any"):
            raise ValueError('read_from must be "leader" or "any"')
        self.read_from = read_from
        # Raises KeyDirectoryError (a clear message) for a missing or incomplete directory.
        self._security = ClientSecurity(keys, self.KEY_KINDS) if keys is not None else None
        if self._security is not None:
            self._security.check_peers(self.peers)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout or min(1.0, timeout)
        self.client_id = f"client-{uuid.uuid4().hex}"
        self._context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._poller = zmq.Poller()  # every socket of _sockets, registered as it is made
        self._leader: str | None = None
        self._seq = 0
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self._rng = random.Random()
        self._next_read = self._rng.randrange(len(self.peers))  # read_from="any": round robin

    # -- the API -----------------------------------------------------------------------------

    def put(self, key: str, value: str) -> None:
        self._call(KVCommand(PUT, key, value))

    def get(self, key: str, consistency: str = LINEARIZABLE) -> str | None:
        """`consistency`: "linearizable" (the default: the leader confirms its leadership
        with a heartbeat round, then answers), "lease" (the leader answers at once while its
        lease holds: it assumes bounded clock drift), or "serializable" (the peer asked
        answers from its own state, leader or not: it may be stale)."""
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        arg = None if consistency == LINEARIZABLE else consistency
        where = ANYWHERE if self.read_from == "any" else None
        value: str | None = self._call(KVCommand(GET, key, arg, where))
        return value

    def delete(self, key: str) -> bool:
        return bool(self._call(KVCommand(DELETE, key)))

    def cas(self, key: str, expected: str | None, new: str) -> bool:
        """Set `key` to `new` if it holds `expected` (None: only if absent)."""
        return bool(self._call(KVCommand(CAS, key, expected, new)))

    def status(self) -> list[dict[str, Any]]:
        """One dict per peer, in the order given: id, role, term, leader, commit_index,
        applied_index, last_log_index, pid; {"id", "role": "unreachable"} for a silent peer."""
        with self._lock:
            self._check_open()
            wanted: dict[int, str] = {}
            for peer in self.peers:
                request_id = next(self._request_ids)
                if self._send(peer, StatusRequest(self.client_id, request_id)):
                    wanted[request_id] = peer
            answers: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + self.attempt_timeout
            while len(answers) < len(wanted) and time.monotonic() < deadline:
                for reply in self._receive_any(deadline):
                    source = wanted.get(reply.request_id)
                    if isinstance(reply, StatusResponse) and source is not None:
                        answers[source] = dict(reply.status)
            return [answers.get(p, {"id": p, "role": "unreachable"}) for p in self.peers]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in self._sockets.values():
                self._poller.unregister(sock)
                sock.close(linger=0)
            self._sockets.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- leader finding and retries ----------------------------------------------------------

    def _call(self, command: KVCommand) -> Any:
        payload = encode_command(command)
        try:
            decode_command(payload)  # the server's own validation: a bad call fails here, now
        except DecodeError as exc:
            raise ValueError(f"invalid {command.op}: {exc}") from None
        with self._lock:
            self._check_open()
            if not command.is_read:
                self._seq += 1  # kept across retries: that is what makes them idempotent
            seq = 0 if command.is_read else self._seq
            deadline = time.monotonic() + self.timeout
            spread = command.is_read and self.read_from == "any"
            peer = self._leader or self.peers[0]
            if spread:
                peer = self.peers[self._next_read % len(self.peers)]
                self._next_read += 1
            refusals = 0
            backoff = _OVERLOAD_BACKOFF[0]
            while time.monotonic() < deadline:
                request_id = next(self._request_ids)
                request = ClientRequest(self.client_id, request_id, seq, payload)
                reply = None
                if self._send(peer, request):
                    reply = self._await(
                        request_id, min(deadline, time.monotonic() + self.attempt_timeout)
                    )
                if reply is None or reply.status == ClientStatus.UNKNOWN:
                    self._leader = None  # silent, down, or lost leadership: ask someone else
                    peer = self._next_peer(peer)
                elif reply.status == ClientStatus.OK:
                    if not spread:
                        self._leader = peer
                    return decode_result(reply.result)
                elif reply.status == ClientStatus.NOT_LEADER:
                    hint = reply.leader_hint
                    if hint in self.peers and hint != peer:
                        peer = hint
                        continue
                    peer = self._next_peer(peer)
                    refusals += 1
                    if refusals % len(self.peers) == 0:
                        time.sleep(_NO_LEADER_PAUSE)  # nobody leads yet: an election is on
                elif reply.status == ClientStatus.OVERLOADED:
                    # Nothing was done: wait (jittered, doubling) and ask the same leader again,
                    # with the same sequence number.
                    pause = min(backoff, max(0.0, deadline - time.monotonic()))
                    time.sleep(pause * self._rng.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, _OVERLOAD_BACKOFF[1])
                else:
                    raise CommandError(reply.message or "refused by the service")
            raise ClientTimeout(
                f"no definite answer within {self.timeout}s; the operation may or may not have "
                "taken effect"
            )

    def _next_peer(self, peer: str) -> str:
        return self.peers[(self.peers.index(peer) + 1) % len(self.peers)]

    def _socket(self, peer: str) -> zmq.Socket[bytes]:
        sock = self._sockets.get(peer)
        if sock is None:
            host, port = parse_peer(peer)
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, self.client_id.encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing for a peer that is not connected
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RECONNECT_IVL, 50)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if self._security is not None:
                self._security.configure_client(sock, peer)
            sock.connect(f"tcp://{host}:{port}")
            self._sockets[peer] = sock
            self._poller.register(sock, zmq.POLLIN)
        return sock

    def _send(self, peer: str, message: ClientRequest | StatusRequest | AdminRequest) -> bool:
        """Hand `message` to the peer's socket; False if the peer is not reachable now."""
        sock = self._socket(peer)
        frame = codec.encode(message)
        for attempt in range(2):
            try:
                sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                # IMMEDIATE: nothing is queued while unconnected. A new socket needs a moment
                # to connect, so wait once for it to become writable.
                if attempt == 0 and not sock.poll(_CONNECT_WAIT_MS, zmq.POLLOUT):
                    return False
            except zmq.ZMQError as exc:
                raise KVError(f"cannot send to {peer}: {exc}") from exc
        return False

    def _await(self, request_id: int, deadline: float) -> ClientResponse | None:
        while time.monotonic() < deadline:
            for reply in self._receive_any(deadline):
                if isinstance(reply, ClientResponse) and reply.request_id == request_id:
                    return reply
                # Anything else answers an earlier attempt: its outcome is moot now.
        return None

    def _receive_any(self, deadline: float) -> list[Any]:
        timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
        replies = []
        for sock, _ in self._poller.poll(timeout_ms):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    replies.append(codec.decode(frame))
                except DecodeError:
                    continue  # garbage from a peer is not the client's problem
        return replies

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("client is closed")


class AdminClient(KVClient):
    """Operator requests (`launcher.py admin`); the same constructor as KVClient.

        a = AdminClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=5.0)
        a.members()           # {"leader": id or None, "voters": [...], "learners": [...]}
        a.snapshot()          # the leader snapshots now: {"peer", "index", "term", "bytes"}
        a.snapshot("H:P")     # that peer does
        a.transfer_leader()   # hand leadership to the most up-to-date voter: {"from", "to"}
        a.transfer_leader("H:P")  # or to that one

    Errors as KVClient's: CommandError for a definite refusal (e.g. snapshots are off there),
    ClientTimeout when no answer came in time. (Membership changes arrive with their own
    issue.) With `keys=DIR` it uses an admin key (admins/), which a
    cluster run with `--keys` requires for admin operations."""

    KEY_KINDS = (ADMINS, CLIENTS)

    def members(self) -> dict[str, Any]:
        """The configuration as the leader reports it (from any peer, if none leads)."""
        statuses = [s for s in self.status() if "conf" in s]
        if not statuses:
            raise ClientTimeout(f"no peer answered within {self.attempt_timeout}s")
        leaders = [s for s in statuses if s.get("role") == "leader"]
        source = max(leaders or statuses, key=lambda s: s.get("term", 0))
        return {
            "leader": source.get("leader"),
            "voters": list(source["conf"]),
            "learners": list(source.get("learners", [])),
        }

    def snapshot(self, peer: str | None = None) -> dict[str, Any]:
        """Have `peer` (default: the leader) take a snapshot now; its index, term and size."""
        deadline = time.monotonic() + self.timeout
        if peer is not None:
            parse_peer(peer)
        target = peer or self._await_leader(deadline)
        reply = self._admin(target, ADMIN_SNAPSHOT, "", deadline)
        if reply is None:
            raise ClientTimeout(f"{target} did not answer within {self.timeout}s")
        return self._admin_result(target, reply)

    def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        """Have the leader hand leadership to voter `to` (default: the most up-to-date other
        voter); {"from": old leader, "to": new leader} once the old one stepped down for it.
        CommandError when refused: no such voter, a transfer under way, or the target did not
        take over within an election timeout (the old leader then leads on)."""
        deadline = time.monotonic() + self.timeout
        if to is not None:
            parse_peer(to)
        while True:
            leader = self._await_leader(deadline)
            reply = self._admin(leader, ADMIN_TRANSFER_LEADER, to or "", deadline)
            if reply is None:
                raise ClientTimeout(f"{leader} did not answer within {self.timeout}s")
            if reply.status != ClientStatus.NOT_LEADER:
                return self._admin_result(leader, reply)
            time.sleep(_NO_LEADER_PAUSE)  # it stopped leading meanwhile: ask the next one

    def _admin(self, peer: str, op: str, target: str, deadline: float) -> ClientResponse | None:
        """Send one AdminRequest to `peer` and wait for its answer until `deadline` (an admin
        operation takes a while: wait for it, not for an attempt); None if none came."""
        with self._lock:
            self._check_open()
            while time.monotonic() < deadline:
                request_id = next(self._request_ids)
                if self._send(peer, AdminRequest(self.client_id, request_id, op, target)):
                    reply = self._await(request_id, deadline)
                    if reply is not None:
                        return reply
                time.sleep(_NO_LEADER_PAUSE)
        return None

    @staticmethod
    def _admin_result(peer: str, reply: ClientResponse) -> dict[str, Any]:
        if reply.status != ClientStatus.OK:
            raise CommandError(reply.message or "refused by the service")
        try:
            return decode_admin_result(reply.result)
        except DecodeError as exc:
            raise KVError(f"{peer} answered garbage: {exc}") from None

    def _await_leader(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            leaders = [s["id"] for s in self.status() if s.get("role") == "leader"]
            if leaders:
                leader: str = leaders[0]
                return leader
            time.sleep(_NO_LEADER_PAUSE)
        raise ClientTimeout(f"no leader known within {self.timeout}s")
