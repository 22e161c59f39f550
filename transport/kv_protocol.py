"""The KV service's commands and results: what travels inside ClientRequest.command (writes),
ClientQuery.query (gets), ClientResponse.result and the replicated log.

A client command is msgpack [op, key, arg1, arg2]; the log entry the server proposes for it adds
the client's session: [client_id, seq, op, key, arg1, arg2]. Results are msgpack values
(None, str or bool; transport/results.py). Everything decoded from the network is validated
here, before Raft sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from storage.entry import slot_setters
from transport.errors import DecodeError
from transport.results import decode_result, encode_result  # noqa: F401 - the KV results
from transport.rpc import (  # noqa: F401 - re-exported
    ADMIN_ADD_LEARNER,
    ADMIN_ADD_PEER,
    ADMIN_PROMOTE,
    ADMIN_REMOVE_PEER,
    ADMIN_SNAPSHOT,
    ADMIN_TRANSFER_LEADER,
    CONSISTENCIES,
    LEASE,
    LINEARIZABLE,
    MEMBERSHIP_OPS,
    SERIALIZABLE,
)

PUT, GET, DELETE, CAS = "put", "get", "delete", "cas"
OPS = frozenset((PUT, GET, DELETE, CAS))
# A get's consistency, carried in its arg1 (None: linearizable, the default) and in the
# ClientQuery that carries it.
ANYWHERE = "any"  # a get's arg2: a follower may serve it (KVClient read_from="any")
MAX_KEY_BYTES = 4096
MAX_VALUE_BYTES = 1024 * 1024
# UTF-8 takes at most 4 bytes a character: a string this short is within its limit unencoded.
_SAFE_KEY_CHARS = MAX_KEY_BYTES // 4
_SAFE_VALUE_CHARS = MAX_VALUE_BYTES // 4
_GET_CONSISTENCIES = frozenset((None, *CONSISTENCIES))
_GET_WHERE = frozenset((None, ANYWHERE))


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
    return LoggedCommand(*decode_logged_parts(data))


def decode_logged_parts(data: bytes) -> tuple[str, int, KVCommand]:
    """decode_logged's (client_id, seq, command), without the LoggedCommand: what the state
    machine takes apart again at once, once per applied entry on every replica."""
    fields = _unpack(data, 6)
    client_id, seq = fields[0], fields[1]
    if not isinstance(client_id, str) or type(seq) is not int or seq < 0:
        raise DecodeError("bad session in logged command")
    return client_id, seq, _command(fields[2:])


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
    if (
        type(key) is not str
        or not key
        or (len(key) > _SAFE_KEY_CHARS and len(key.encode()) > MAX_KEY_BYTES)
    ):
        raise DecodeError("a key is a non-empty string of at most 4 KiB")
    for arg in (arg1, arg2):
        if arg is not None and (
            type(arg) is not str
            or (len(arg) > _SAFE_VALUE_CHARS and len(arg.encode()) > MAX_VALUE_BYTES)
        ):
            raise DecodeError("a value is a string of at most 1 MiB, or null")
    if op == PUT and arg1 is None:
        raise DecodeError("put needs a value")
    if op == CAS and arg2 is None:
        raise DecodeError("cas needs a new value")
    if op == GET and (arg1 not in _GET_CONSISTENCIES or arg2 not in _GET_WHERE):
        raise DecodeError(f"a get's consistency is one of {', '.join(CONSISTENCIES)}")
    command = _new_object(KVCommand)  # KVCommand(op, key, arg1, arg2), without __init__'s frame
    _set_op(command, op)
    _set_key(command, key)
    _set_arg1(command, arg1)
    _set_arg2(command, arg2)
    return command


_new_object = object.__new__
_set_op, _set_key, _set_arg1, _set_arg2 = slot_setters(KVCommand, "op", "key", "arg1", "arg2")
