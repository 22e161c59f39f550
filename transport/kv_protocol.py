"""The KV service's commands and results: what travels inside ClientRequest.command,
ClientResponse.result and the replicated log.

A client command is msgpack [op, key, arg1, arg2]; the log entry the server proposes for it adds
the client's session: [client_id, seq, op, key, arg1, arg2]. Results are msgpack values
(None, str or bool). Everything decoded from the network is validated here, before Raft sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from transport.errors import DecodeError

PUT, GET, DELETE, CAS = "put", "get", "delete", "cas"
OPS = frozenset((PUT, GET, DELETE, CAS))
# A get's consistency, carried in its arg1 (None: linearizable, the default).
LINEARIZABLE, LEASE, SERIALIZABLE = "linearizable", "lease", "serializable"
CONSISTENCIES = (LINEARIZABLE, LEASE, SERIALIZABLE)
ANYWHERE = "any"  # a get's arg2: a follower may serve it (KVClient read_from="any")
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024

# AdminRequest.op values: operations on the peer itself, answered with a msgpack map.
ADMIN_SNAPSHOT = "snapshot"  # -> {"peer", "index", "term", "bytes"} of the snapshot taken
# To the leader; `target` the voter to hand over to ("" for the most up-to-date one)
# -> {"from": the old leader, "to": the new one}.
ADMIN_TRANSFER_LEADER = "transfer-leader"
# Membership changes, to the leader; `target` the peer (HOST:PORT) -> {"leader": the leader
# that made the change, "voters": [...], "learners": [...]}, the configuration once committed.
ADMIN_ADD_PEER = "add-peer"  # make a voter (a new peer catches up first; a learner is promoted)
ADMIN_ADD_LEARNER = "add-learner"  # replicate to it, never counted in a quorum
ADMIN_PROMOTE = "promote"  # make a learner a voter
ADMIN_REMOVE_PEER = "remove-peer"  # remove a voter (the leader itself too) or a learner
MEMBERSHIP_OPS = (ADMIN_ADD_PEER, ADMIN_ADD_LEARNER, ADMIN_PROMOTE, ADMIN_REMOVE_PEER)


@dataclass(frozen=True, slots=True)
class KVCommand:
    """put(key, arg1); get(key, consistency=arg1); delete(key); cas(key, expected=arg1,
    new=arg2)."""

    op: str
    key: str
    arg1: str | None = None
    arg2: str | None = None

    @property
    def is_read(self) -> bool:
        return self.op == GET

    @property
    def consistency(self) -> str:
        """A get's consistency (see CONSISTENCIES)."""
        return self.arg1 or LINEARIZABLE

    @property
    def anywhere(self) -> bool:
        """A get that any peer may serve (read_from="any"), not only the leader: arg2 "any"."""
        return self.arg2 == ANYWHERE


@dataclass(frozen=True, slots=True)
class LoggedCommand:
    """A command as replicated: with the session that makes retries idempotent (§6.3)."""

    client_id: str
    seq: int
    command: KVCommand


def encode_command(command: KVCommand) -> bytes:
    return msgpack.packb([command.op, command.key, command.arg1, command.arg2])


def decode_command(data: bytes) -> KVCommand:
    fields = _unpack(data, 4)
    return _command(fields)


def encode_logged(logged: LoggedCommand) -> bytes:
    c = logged.command
    return msgpack.packb([logged.client_id, logged.seq, c.op, c.key, c.arg1, c.arg2])


def decode_logged(data: bytes) -> LoggedCommand:
    fields = _unpack(data, 6)
    client_id, seq = fields[0], fields[1]
    if not isinstance(client_id, str) or type(seq) is not int or seq < 0:
        raise DecodeError("bad session in logged command")
    return LoggedCommand(client_id, seq, _command(fields[2:]))


def encode_result(value: Any) -> bytes:
    return msgpack.packb(value)


def decode_result(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise DecodeError(f"bad result: {exc}") from None


def decode_admin_result(data: bytes) -> dict[str, Any]:
    """An AdminRequest's answer: a str-keyed msgpack map (DecodeError otherwise)."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=0)
    except Exception as exc:
        raise DecodeError(f"bad admin result: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError("an admin result is a map")
    return value


def _unpack(data: bytes, arity: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(data, raw=False, max_bin_len=0, max_map_len=0)
    except Exception as exc:
        raise DecodeError(f"undecodable KV command: {type(exc).__name__}") from None
    if not isinstance(fields, list) or len(fields) != arity:
        raise DecodeError(f"a KV command is an array of {arity}")
    return fields


def _command(fields: list[Any]) -> KVCommand:
    op, key, arg1, arg2 = fields
    if op not in OPS:
        raise DecodeError(f"unknown KV operation {op!r}")
    if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
        raise DecodeError("a key is a non-empty string of at most 4 KiB")
    for arg in (arg1, arg2):
        if arg is not None and (not isinstance(arg, str) or len(arg.encode()) > MAX_VALUE_BYTES):
            raise DecodeError("a value is a string of at most 1 MiB, or null")
    if op == PUT and arg1 is None:
        raise DecodeError("put needs a value")
    if op == CAS and arg2 is None:
        raise DecodeError("cas needs a new value")
    if op == GET and (arg1 not in (None, *CONSISTENCIES) or arg2 not in (None, ANYWHERE)):
        raise DecodeError(f"a get's consistency is one of {', '.join(CONSISTENCIES)}")
    return KVCommand(op, key, arg1, arg2)
