"""RaftClient: the client of any state machine served by actors.client_server.ClientServer.

    with RaftClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=5.0) as c:
        c.apply(b"incr 5")        # a write: exactly once, its result once committed and applied
        c.read(b"total")          # a read without the log: linearizable by default
        c.read(b"total", consistency="lease")   # or "serializable"
        c.status()                # one dict per peer

Commands and queries are the state machine's own bytes; results are what it returned (msgpack
values). transport.client.KVClient is this client with the KV service's commands.

It finds the leader itself: it remembers who answered last, follows NOT_LEADER redirect hints,
and moves on to another peer when one is down, slow or not leading, until `timeout` runs out.

It follows the cluster's membership (`KnownPeers`), so that a long-lived client keeps working
after peers were added and removed, even all of those it was given: it adds a peer that a
redirect names, and takes the members ("conf", "learners", "old_conf") from every status
answer it gets - those of `status()`, and those it asks every peer for whenever it has tried
each one it knows without success. A leader's status also drops the peers that are no longer
members. It needs one peer it knows to still answer (or to redirect) while the membership
changes; with `keys`, a new peer's public key must be in the key directory (read again, at most
every few seconds, when a peer without a key there is named).

So that an idle client keeps up too (etcd's AutoSyncInterval), a daemon thread asks every peer
known for its status once the client has been idle for `sync_interval` seconds (default 30;
None turns it off), and again every `sync_interval` while it stays idle: a client idle through
a whole change of membership still knows a member when it is used again. (A client in use
follows the membership through its operations, and is not held up by a sync.) When nothing
answers, ClientTimeout names every peer tried and what each did.

Errors:
- ValueError / TypeError: a malformed operation, refused before anything is sent.
- ClientTimeout: no definite answer in time. The operation MAY OR MAY NOT have taken effect.
- CommandError: a definite failure (a command the service refuses); nothing was applied.
A leader with too much in flight answers OVERLOADED (nothing done): the client backs off,
doubling a jittered pause, and retries with the same sequence number until `timeout`.

Exactly-once writes: the client has a random id and numbers its writes; a retried write keeps
its sequence number, and the state machine answers a duplicate from its session instead of
applying it twice (Raft dissertation §6.3; actors/sessions.py).

Security: with `keys=DIR` (a directory made by `launcher.py keygen`) every connection is
CurveZMQ, encrypted and authenticated both ways: the client proves it holds a key the cluster
knows (a client key; an AdminClient an admin key) and checks each peer's. A cluster run with
`--keys` refuses clients without one (they see ClientTimeout).

Thread-safety: a client is safe to share between threads, but it serialises their requests
(one in flight per client, which the exactly-once sessions require). For parallel requests,
use one client per thread.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import zmq

from transport import codec
from transport.errors import DecodeError, TransportError
from transport.peers import parse_peer
from transport.results import decode_result
from transport.rpc import (
    CONSISTENCIES,
    LINEARIZABLE,
    AdminRequest,
    ClientQuery,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    StatusRequest,
    StatusResponse,
)
from transport.security import ADMINS, CLIENTS, ClientSecurity, KeyDirectoryError

_NO_LEADER_PAUSE = 0.05  # after every peer said "no leader" (an election is on): wait a little
_OVERLOAD_BACKOFF = (0.005, 0.5)  # first and longest wait after OVERLOADED (doubling, jittered)
_CONNECT_WAIT_MS = 200  # how long a send waits for a connection to a peer to come up
_KEYS_REREAD_INTERVAL = 5.0  # at most this often, read the key directory again for a new peer
_MEMBER_KEYS = ("conf", "old_conf", "learners")  # where a status lists the members
DEFAULT_SYNC_INTERVAL = 30.0  # seconds between two membership syncs of a client

# What an attempt on a peer came to, for ClientTimeout's message (see `_Attempts`).
_SILENT = "no answer"
_NO_LEADER = "not the leader, no leader known"
_REDIRECTED = "not the leader"
_UNDECIDED = "outcome unknown"
_BUSY = "overloaded"


class ClientError(TransportError):
    """Base class of the client's errors."""


class ClientTimeout(ClientError):
    """No definite answer in time: the operation may or may not have taken effect."""


class CommandError(ClientError):
    """The service refused the operation definitely; it was not applied."""


class KnownPeers:
    """The peers a client talks to, kept in step with the cluster's membership. Pure; its
    owner serialises the calls (KVClient: under its lock). `peers` is replaced, never changed
    in place, so a reader without the lock still sees a whole list; it is never empty.

    - `learn(peer)`: a redirect named `peer`: it is added.
    - `note_status(status)`: the members a status reports ("conf", "old_conf", "learners") are
      added. A leader's status is authoritative: the peers it does not list (itself aside: a
      leader removing itself still leads until its change commits) are dropped, unless that
      would leave none, and a leader's status of an older term than one already taken is
      ignored. A peer dropped by the leader of term T comes back only by a redirect, a later
      leader's status, or another peer's status of a term above T (a removed follower, no
      longer replicated to, may go on reporting the old configuration).

    `reachable(peer)` says whether a new peer could be connected to (with keys: its public
    key is known); one that cannot is not added.
    """

    def __init__(
        self, peers: Sequence[str], reachable: Callable[[str], bool] = lambda peer: True
    ) -> None:
        if not peers:
            raise ValueError("KVClient needs at least one peer")
        for peer in peers:
            parse_peer(peer)  # a clear ValueError for a malformed address
        self.peers: list[str] = list(dict.fromkeys(peers))
        self._reachable = reachable
        self._leader_term = -1  # the term of the newest leader status taken (-1: none yet)
        self._dropped: dict[str, int] = {}  # peer -> the term of the leader status that dropped it

    def learn(self, peer: str) -> bool:
        """Add `peer` (a redirect named it); whether it is known now: False for an address
        that is not HOST:PORT or a peer that cannot be reached."""
        if peer in self.peers:
            return True
        if not _is_address(peer) or not self._reachable(peer):
            return False
        self._dropped.pop(peer, None)
        self.peers = [*self.peers, peer]
        return True

    def note_status(self, status: Mapping[str, Any]) -> list[str]:
        """Take the members `status` reports (see the class docstring); the peers dropped."""
        term = status.get("term")
        if type(term) is not int:
            return []
        members = _members(status)
        if status.get("role") != "leader":
            for peer in members:
                if self._dropped.get(peer, -1) < term:
                    self.learn(peer)
            return []
        if term < self._leader_term or not members:
            return []
        self._leader_term = term
        speaker = status.get("id")
        keep = set(members) | ({speaker} if isinstance(speaker, str) else set())
        kept = [p for p in self.peers if p in keep]
        added = [p for p in members if p not in kept and self._reachable(p)]
        if not kept and not added:
            return []  # never drop to nobody
        dropped = [p for p in self.peers if p not in keep]
        for peer in dropped:
            self._dropped[peer] = term
        for peer in added:
            self._dropped.pop(peer, None)
        self.peers = kept + added
        return dropped

    def next_after(self, peer: str) -> str:
        """The peer to try after `peer` (the first one if `peer` is not known any more)."""
        peers = self.peers
        if peer not in peers:
            return peers[0]
        return peers[(peers.index(peer) + 1) % len(peers)]


def _is_address(peer: object) -> bool:
    try:
        parse_peer(peer)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _members(status: Mapping[str, Any]) -> list[str]:
    """The valid HOST:PORT members a status lists, voters first, each once."""
    found: dict[str, None] = {}
    for key in _MEMBER_KEYS:
        listed = status.get(key)
        if isinstance(listed, list):
            found.update((p, None) for p in listed if isinstance(p, str) and _is_address(p))
    return list(found)


class _Attempts:
    """What each peer tried in one operation last answered, or that it never answered (for
    ClientTimeout's message: an attempt cut short by the deadline does not hide an answer)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def note(self, peer: str, outcome: str) -> None:
        if outcome != _SILENT or peer not in self.outcomes:
            self.outcomes[peer] = outcome

    def timeout(self, budget: float) -> ClientTimeout:
        tried = "; ".join(f"{peer}: {outcome}" for peer, outcome in self.outcomes.items())
        if all(outcome == _SILENT for outcome in self.outcomes.values()):
            hint = (
                " - none of them answered: is the cluster running there, or did its membership "
                "move past every peer this client knows?"
            )
        else:
            hint = ""
        return ClientTimeout(
            f"no definite answer within {budget}s (tried {tried}){hint}; the operation may or "
            "may not have taken effect"
        )


def _sync_members_every(
    client: weakref.ref[RaftClient], interval: float, stop: threading.Event
) -> None:
    """The body of a client's membership-sync thread: holds the client only weakly, so a client
    dropped without `close` is still collected (and the thread then ends)."""
    while not stop.wait(interval):
        target = client()
        if target is None:
            return
        target._sync_members()
        del target


class RaftClient:
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
        sync_interval: float | None = DEFAULT_SYNC_INTERVAL,
    ) -> None:
        """`read_from`: "leader" sends every request to the leader; "any" spreads gets over
        every peer (round robin) - each still linearizable (a follower asks the leader for a
        read index and answers from its own state once it has applied it) unless the get
        asks for less. `sync_interval`: seconds between two background membership syncs
        (None: never; see the module docstring)."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if sync_interval is not None and sync_interval <= 0:
            raise ValueError("sync_interval must be > 0, or None for no sync")
        self._known = KnownPeers(peers, self._has_key)  # ValueError for a bad or empty list
        if read_from not in ("leader", "any"):
            raise ValueError('read_from must be "leader" or "any"')
        self.read_from = read_from
        # Raises KeyDirectoryError (a clear message) for a missing or incomplete directory.
        self._keys = keys
        self._security = ClientSecurity(keys, self.KEY_KINDS) if keys is not None else None
        self._keys_read_at = -float("inf")  # when _has_key last read the directory again
        if self._security is not None:
            self._security.check_peers(self._known.peers)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout or min(1.0, timeout)
        self.client_id = f"client-{uuid.uuid4().hex}"
        self._context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._poller = zmq.Poller()  # every socket of _sockets, registered as it is made
        self._retiring: set[str] = set()  # peers dropped whose sockets `_begin` closes
        self._leader: str | None = None
        self._seq = 0
        self._request_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self._rng = random.Random()
        self._next_read = self._rng.randrange(len(self._known.peers))  # read_from="any"
        self._stop_sync = threading.Event()
        self._sync_interval = sync_interval
        self._used_at = time.monotonic()  # when the last operation began (written under the lock)
        if sync_interval is not None:
            threading.Thread(
                target=_sync_members_every,
                args=(weakref.ref(self), sync_interval, self._stop_sync),
                name=f"{self.client_id}-sync",
                daemon=True,  # never keeps a process alive; `close` ends it at once
            ).start()

    @property
    def peers(self) -> list[str]:
        """The peers this client knows now: those given, as the cluster's membership changed
        them (see the module docstring). A copy: changing it changes nothing."""
        return list(self._known.peers)

    # -- the API -----------------------------------------------------------------------------

    def apply(self, command: bytes) -> Any:
        """Write `command` (the state machine's bytes) exactly once; its result once it is
        committed and applied."""
        if not isinstance(command, bytes):
            raise TypeError("a command is bytes")
        return self._call(command)

    def read(self, query: bytes, consistency: str = LINEARIZABLE) -> Any:
        """Read with `query` (the state machine's bytes; its `on_read`/`on_query` answers) by
        `consistency`: "linearizable" (the default: the leader confirms its leadership with a
        heartbeat round, then answers), "lease" (the leader answers at once while its lease
        holds: it assumes bounded clock drift), or "serializable" (the peer asked answers from
        its own state, leader or not: it may be stale). With read_from="any" a follower may
        answer (still as linearizable as asked)."""
        if not isinstance(query, bytes):
            raise TypeError("a query is bytes")
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        return self._call(query, consistency)

    def status(self) -> list[dict[str, Any]]:
        """One dict per peer this client knows (those given, until it learns of membership
        changes), in order: id, role, term, leader, commit_index, applied_index,
        last_log_index, pid, conf, learners, ...; {"id", "role": "unreachable"} for a silent
        peer. The members the answers report update the peers known (for the next call)."""
        with self._lock:
            self._begin()
            return self._status_round()

    def _status_round(self) -> list[dict[str, Any]]:
        """`status()` with the lock held."""
        asked = self._known.peers
        wanted: dict[int, str] = {}
        for peer in asked:
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
        return [answers.get(p, {"id": p, "role": "unreachable"}) for p in asked]

    def _sync_members(self) -> None:
        """One background membership sync (the sync thread's): a status round, unless the
        client is busy (an operation in progress follows the membership by itself) or
        closed."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            idle = time.monotonic() - self._used_at >= (self._sync_interval or 0.0)
            if idle and not self._closed:
                self._begin()
                self._status_round()
        except Exception:  # a sync is best effort: the next operation reports what is wrong
            pass
        finally:
            self._lock.release()

    def close(self) -> None:
        self._stop_sync.set()
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

    def _call(self, payload: bytes, consistency: str | None = None) -> Any:
        """Send a write (`consistency` None) or a read until a definite answer or `timeout`."""
        is_read = consistency is not None
        with self._lock:
            self._begin()
            if not is_read:
                self._seq += 1  # kept across retries: that is what makes them idempotent
            seq = self._seq
            deadline = time.monotonic() + self.timeout
            spread = is_read and self.read_from == "any"
            peer = self._leader or self._known.peers[0]
            if spread:
                peer = self._known.peers[self._next_read % len(self._known.peers)]
                self._next_read += 1
            refusals = 0
            misses = 0  # attempts in a row that got nowhere (no answer, or no leader)
            backoff = _OVERLOAD_BACKOFF[0]
            attempts = _Attempts()
            while time.monotonic() < deadline:
                if misses >= len(self._known.peers):
                    # Every peer known tried in vain: maybe the membership changed. Ask them
                    # all who the members are; the answers are taken as they arrive.
                    misses = 0
                    self._ask_members()
                request_id = next(self._request_ids)
                request: ClientRequest | ClientQuery = (
                    ClientQuery(self.client_id, request_id, payload, consistency, spread)
                    if consistency is not None
                    else ClientRequest(self.client_id, request_id, seq, payload)
                )
                reply = None
                if self._send(peer, request):
                    reply = self._await(
                        request_id, min(deadline, time.monotonic() + self.attempt_timeout)
                    )
                if reply is None or reply.status == ClientStatus.UNKNOWN:
                    attempts.note(peer, _SILENT if reply is None else _UNDECIDED)
                    self._leader = None  # silent, down, or lost leadership: ask someone else
                    peer = self._known.next_after(peer)
                    misses += 1
                elif reply.status == ClientStatus.OK:
                    if not spread:
                        self._leader = peer
                    try:
                        return decode_result(reply.result)
                    except DecodeError as exc:
                        raise ClientError(f"{peer} answered garbage: {exc}") from None
                elif reply.status == ClientStatus.NOT_LEADER:
                    hint = reply.leader_hint
                    attempts.note(peer, f"{_REDIRECTED} (says {hint})" if hint else _NO_LEADER)
                    if hint and hint != peer and self._known.learn(hint):
                        peer = hint  # a redirect, maybe to a peer added since we started
                        continue
                    peer = self._known.next_after(peer)
                    misses += 1
                    refusals += 1
                    if refusals % len(self._known.peers) == 0:
                        time.sleep(_NO_LEADER_PAUSE)  # nobody leads yet: an election is on
                elif reply.status == ClientStatus.OVERLOADED:
                    attempts.note(peer, _BUSY)
                    # Nothing was done: wait (jittered, doubling) and ask the same leader again,
                    # with the same sequence number.
                    pause = min(backoff, max(0.0, deadline - time.monotonic()))
                    time.sleep(pause * self._rng.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, _OVERLOAD_BACKOFF[1])
                else:
                    raise CommandError(reply.message or "refused by the service")
            raise attempts.timeout(self.timeout)

    def _ask_members(self) -> None:
        """Send a StatusRequest to every peer known, without waiting for any connection;
        `_receive_any` takes the answers' members whenever they arrive."""
        for peer in self._known.peers:
            self._send(peer, StatusRequest(self.client_id, next(self._request_ids)), wait=False)

    def _note_status(self, status: Mapping[str, Any]) -> None:
        """The members a status answer reports (KnownPeers.note_status). The sockets of the
        peers dropped are closed when the next operation begins (`_begin`): answers already on
        their way (a status round) still arrive."""
        dropped = self._known.note_status(status)
        self._retiring.update(dropped)
        if self._leader in dropped:
            self._leader = None

    def _begin(self) -> None:
        """Start an operation (lock held): refuse if closed; close the sockets of the peers
        dropped since the last one (unless learnt again meanwhile)."""
        self._check_open()
        self._used_at = time.monotonic()
        known = self._known.peers
        for peer in self._retiring:
            sock = self._sockets.pop(peer, None) if peer not in known else None
            if sock is not None:
                self._poller.unregister(sock)
                sock.close(linger=0)
        self._retiring.clear()

    def _has_key(self, peer: str) -> bool:
        """Whether this client can connect to `peer`: always without keys; with keys, when
        the directory holds its public key. For a peer it has none of, the directory is read
        again (at most every _KEYS_REREAD_INTERVAL s): a new peer's key may have been
        distributed since this client started."""
        security = self._security
        if security is None or peer in security.peer_keys:
            return True
        now = time.monotonic()
        if self._keys is None or now - self._keys_read_at < _KEYS_REREAD_INTERVAL:
            return False
        self._keys_read_at = now
        try:
            self._security = ClientSecurity(self._keys, self.KEY_KINDS)
        except KeyDirectoryError:
            return False  # the directory is unreadable now: keep the keys read before
        return peer in self._security.peer_keys

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

    def _send(
        self,
        peer: str,
        message: ClientRequest | ClientQuery | StatusRequest | AdminRequest,
        *,
        wait: bool = True,
    ) -> bool:
        """Hand `message` to the peer's socket; False if the peer is not reachable now (with
        `wait`, after waiting a moment for a connection to come up)."""
        sock = self._socket(peer)
        frame = codec.encode(message)
        for attempt in range(2):
            try:
                sock.send(frame, zmq.NOBLOCK)
                return True
            except zmq.Again:
                # IMMEDIATE: nothing is queued while unconnected. A new socket needs a moment
                # to connect, so wait once for it to become writable.
                if not wait or (attempt == 0 and not sock.poll(_CONNECT_WAIT_MS, zmq.POLLOUT)):
                    return False
            except zmq.ZMQError as exc:
                raise ClientError(f"cannot send to {peer}: {exc}") from exc
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
        for reply in replies:  # after the receiving: this may change the peers known
            if isinstance(reply, StatusResponse):
                self._note_status(reply.status)
        return replies

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError("client is closed")
