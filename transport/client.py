"""KVClient: the public client of the replicated KV service (its API is the public contract),
and AdminClient, the operators' client of any ClientServer.

    c = KVClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=5.0)
    c.put("k", "v"); c.get("k"); c.delete("k"); c.cas("k", "v", "w"); c.status(); c.close()

KVClient is transport.raft_client.RaftClient with the KV service's commands
(transport/kv_protocol.py): leader finding, following the membership, retries, exactly-once
writes, keys and the errors are RaftClient's (see its module docstring). Here, ValueError or
TypeError also means a malformed operation (an empty or oversized key, a non-string value),
refused before anything is sent.
"""

from __future__ import annotations

import time
from typing import Any

from transport.errors import DecodeError
from transport.kv_protocol import (
    CAS,
    DELETE,
    GET,
    PUT,
    KVCommand,
    decode_command,
    encode_command,
)
from transport.peers import parse_peer
from transport.raft_client import (
    _NO_LEADER_PAUSE,
    DEFAULT_SYNC_INTERVAL,
    ClientError,
    ClientTimeout,
    CommandError,
    KnownPeers,
    RaftClient,
)
from transport.results import decode_admin_result
from transport.rpc import (
    ADMIN_ADD_LEARNER,
    ADMIN_ADD_PEER,
    ADMIN_PROMOTE,
    ADMIN_REMOVE_PEER,
    ADMIN_SNAPSHOT,
    ADMIN_TRANSFER_LEADER,
    CONSISTENCIES,
    LINEARIZABLE,
    AdminRequest,
    ClientResponse,
    ClientStatus,
)
from transport.security import ADMINS, CLIENTS

__all__ = [
    "DEFAULT_SYNC_INTERVAL",
    "AdminClient",
    "ClientError",
    "ClientTimeout",
    "CommandError",
    "KVClient",
    "KVError",
    "KnownPeers",
]

KVError = ClientError
"""The base class of KVClient's errors (ClientError, by its older name)."""


class KVClient(RaftClient):
    """The KV service's client: RaftClient's constructor (peers, timeout, keys=, read_from=,
    sync_interval=, ...)."""

    def put(self, key: str, value: str) -> None:
        self._call(_validated(KVCommand(PUT, key, value)))

    def get(self, key: str, consistency: str = LINEARIZABLE) -> str | None:
        """`consistency`: "linearizable" (the default: the leader confirms its leadership
        with a heartbeat round, then answers), "lease" (the leader answers at once while its
        lease holds: it assumes bounded clock drift), or "serializable" (the peer asked
        answers from its own state, leader or not: it may be stale)."""
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        value: str | None = self._call(_validated(KVCommand(GET, key)), consistency)
        return value

    def delete(self, key: str) -> bool:
        return bool(self._call(_validated(KVCommand(DELETE, key))))

    def cas(self, key: str, expected: str | None, new: str) -> bool:
        """Set `key` to `new` if it holds `expected` (None: only if absent)."""
        return bool(self._call(_validated(KVCommand(CAS, key, expected, new))))


def _validated(command: KVCommand) -> bytes:
    """`command`'s bytes, once the server's own validation passed: a bad call fails here."""
    payload = encode_command(command)
    try:
        decode_command(payload)
    except DecodeError as exc:
        raise ValueError(f"invalid {command.op}: {exc}") from None
    return payload


class AdminClient(RaftClient):
    """Operator requests (`launcher.py admin`); the same constructor as KVClient. It works
    against any peer served by actors.client_server.ClientServer (the KV service or an
    embedded node).

        a = AdminClient(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"], timeout=5.0)
        a.members()           # {"leader": id or None, "voters": [...], "learners": [...]}
        a.add_peer("H:P")     # make it a voter (a new peer, `run --join`, catches up first)
        a.add_learner("H:P")  # replicate to it, never counted in a quorum
        a.promote("H:P")      # make that learner a voter
        a.remove_peer("H:P")  # remove a voter (the leader too: it hands over) or a learner
        a.snapshot()          # the leader snapshots now: {"peer", "index", "term", "bytes"}
        a.snapshot("H:P")     # that peer does
        a.transfer_leader()   # hand leadership to the most up-to-date voter: {"from", "to"}
        a.transfer_leader("H:P")  # or to that one

    A membership change answers {"leader": the leader that made it, "voters": [...],
    "learners": [...]} once the new configuration is committed. Requests for the leader
    follow it (redirect hints, statuses) until `timeout`.

    Errors as KVClient's: ValueError for a peer that is not HOST:PORT; CommandError for a
    definite refusal, named (e.g. "ChangeInProgressError: ..." while another change or a
    transfer runs, UnknownPeerError, CatchUpError: a new peer did not catch up, nothing
    changed; snapshots off); ClientTimeout when no answer came in time, or the leader lost its
    leadership during the change: its outcome is unknown then (look at `members()`). With
    `keys=DIR` it uses an admin key (admins/), which a cluster run with `--keys` requires for
    admin operations."""

    KEY_KINDS = (ADMINS, CLIENTS)

    def members(self) -> dict[str, Any]:
        """The configuration as the leader reports it (from any peer, if none leads)."""
        asked = self.status()
        statuses = [s for s in asked if "conf" in s]
        if not statuses:
            tried = ", ".join(s["id"] for s in asked)
            raise ClientTimeout(f"no peer answered within {self.attempt_timeout}s (tried {tried})")
        leaders = [s for s in statuses if s.get("role") == "leader"]
        source = max(leaders or statuses, key=lambda s: s.get("term", 0))
        return {
            "leader": source.get("leader"),
            "voters": list(source["conf"]),
            "learners": list(source.get("learners", [])),
        }

    def add_peer(self, peer: str) -> dict[str, Any]:
        """Make `peer` a voter; a learner is promoted, a new peer first catches up."""
        return self._on_leader(ADMIN_ADD_PEER, _checked(peer))

    def add_learner(self, peer: str) -> dict[str, Any]:
        """Make `peer` a learner: it receives the log, never votes, never leads."""
        return self._on_leader(ADMIN_ADD_LEARNER, _checked(peer))

    def promote(self, peer: str) -> dict[str, Any]:
        """Make learner `peer` a voter, once it has caught up."""
        return self._on_leader(ADMIN_PROMOTE, _checked(peer))

    def remove_peer(self, peer: str) -> dict[str, Any]:
        """Remove voter or learner `peer`; a leader removing itself then hands leadership to
        the most up-to-date remaining voter."""
        return self._on_leader(ADMIN_REMOVE_PEER, _checked(peer))

    def snapshot(self, peer: str | None = None) -> dict[str, Any]:
        """Have `peer` (default: the leader) take a snapshot now; its index, term and size."""
        deadline = time.monotonic() + self.timeout
        target = _checked(peer) if peer is not None else self._await_leader(deadline)
        reply = self._admin(target, ADMIN_SNAPSHOT, "", deadline)
        if reply is None:
            raise ClientTimeout(f"{target} did not answer within {self.timeout}s")
        return self._admin_result(target, reply)

    def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        """Have the leader hand leadership to voter `to` (default: the most up-to-date other
        voter); {"from": old leader, "to": new leader} once the old one stepped down for it.
        CommandError when refused: no such voter, a transfer under way, or the target did not
        take over within an election timeout (the old leader then leads on)."""
        return self._on_leader(ADMIN_TRANSFER_LEADER, _checked(to) if to is not None else "")

    def _on_leader(self, op: str, target: str) -> dict[str, Any]:
        """Send `op` to the leader, following it (a NOT_LEADER answer's hint, else the leader
        the statuses name) until `timeout`; its result map."""
        deadline = time.monotonic() + self.timeout
        leader: str | None = None
        while True:
            if leader is None:
                leader = self._await_leader(deadline)
            reply = self._admin(leader, op, target, deadline)
            if reply is None:
                raise ClientTimeout(f"{leader} did not answer within {self.timeout}s")
            if reply.status != ClientStatus.NOT_LEADER:
                return self._admin_result(leader, reply)
            # It does not lead (any more): where it says, else whoever the statuses name.
            hint = reply.leader_hint
            with self._lock:
                follow = bool(hint) and hint != leader and self._known.learn(hint)
            leader = hint if follow else None
            time.sleep(_NO_LEADER_PAUSE)

    def _admin(self, peer: str, op: str, target: str, deadline: float) -> ClientResponse | None:
        """Send one AdminRequest to `peer` and wait for its answer until `deadline` (an admin
        operation takes a while: wait for it, not for an attempt); None if none came."""
        with self._lock:
            self._begin()
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
        if reply.status == ClientStatus.UNKNOWN:
            raise ClientTimeout(
                f"{peer}: {reply.message or 'no definite answer'}; the operation may or may "
                "not have taken effect"
            )
        if reply.status != ClientStatus.OK:
            raise CommandError(reply.message or "refused by the service")
        try:
            return decode_admin_result(reply.result)
        except DecodeError as exc:
            raise ClientError(f"{peer} answered garbage: {exc}") from None

    def _await_leader(self, deadline: float) -> str:
        """The peer that leads in the highest term the statuses report."""
        statuses: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            statuses = self.status()
            leaders = [s for s in statuses if s.get("role") == "leader"]
            if leaders:
                leader: str = max(leaders, key=lambda s: s.get("term", 0))["id"]
                return leader
            time.sleep(_NO_LEADER_PAUSE)
        seen = ", ".join(f"{s['id']}: {s.get('role')}" for s in statuses) or "none"
        raise ClientTimeout(f"no leader known within {self.timeout}s (peers: {seen})")


def _checked(peer: str) -> str:
    """`peer`, once known to be HOST:PORT (ValueError otherwise)."""
    parse_peer(peer)
    return peer
