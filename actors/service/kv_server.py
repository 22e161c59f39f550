"""KVServer: the service side of KVClient, as one user of actors.client_server.ClientServer.

What the KV service adds to the generic server is its codec: client writes are validated KV
commands (a malformed one is refused before it reaches the log) and are logged in the KV
service's own entry format, [client_id, seq, op, key, arg1, arg2] (transport/kv_protocol.py,
the format of every log written since the first release); the metrics name the operation
(put, get, delete, cas). Gets arrive as ClientQuery and are served by `KVStateMachine.on_read`.
"""

from __future__ import annotations

from actors.client_server import ClientServer, CommandCodec
from actors.raft_node import RaftNode
from transport.base import Transport
from transport.errors import DecodeError
from transport.kv_protocol import GET, LoggedCommand, decode_command, encode_logged


class KVCodec(CommandCodec):
    def write_entry(self, client_id: str, seq: int, command: bytes) -> tuple[str, bytes]:
        try:
            decoded = decode_command(command)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None
        # A get sent as a write (a client older than ClientQuery) is applied through the log:
        # linearizable still, only slower.
        return decoded.op, encode_logged(LoggedCommand(client_id, seq, decoded))

    def query_label(self, query: bytes) -> str:
        try:
            decoded = decode_command(query)
        except DecodeError as exc:
            raise ValueError(str(exc)) from None
        if decoded.op != GET:
            raise ValueError(f"{decoded.op} is not a read")
        return GET


class KVServer(ClientServer):
    def __init__(self, node: RaftNode, transport: Transport) -> None:
        super().__init__(node, transport, KVCodec())
