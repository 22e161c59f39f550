"""KVServer: the service side of KVClient. Turns ClientRequests into Raft commands.

Runs on the transport's I/O thread (it is the RaftNode's client handler), so it never blocks:
a request is validated, proposed with `RaftNode.apply_batch`, and answered from the future's
completion callback (on the FSMCaller's or the Node's thread). Reads go through the log too,
which makes them linearizable (a faster read path, ReadIndex, comes later).
"""

from __future__ import annotations

import logging
from typing import Any

from actors.errors import LeadershipLostError, NodeFailedError, NodeStoppedError, NotLeaderError
from actors.futures import CompletionFuture
from actors.raft_node import RaftNode
from actors.service.errors import InvalidCommandError
from actors.service.kv_store import STALE
from transport.base import Transport
from transport.errors import DecodeError
from transport.kv_protocol import LoggedCommand, decode_command, encode_logged, encode_result
from transport.rpc import (
    ClientRequest,
    ClientResponse,
    ClientStatus,
    RpcMessage,
    StatusRequest,
    StatusResponse,
)

log = logging.getLogger(__name__)


class KVServer:
    def __init__(self, node: RaftNode, transport: Transport) -> None:
        self.node = node
        self.transport = transport
        self.peer_id = transport.local_id
        node.set_client_handler(self.on_client_message)

    def on_client_message(self, message: RpcMessage) -> None:
        if isinstance(message, ClientRequest):
            self._on_request(message)
        elif isinstance(message, StatusRequest):
            self._on_status(message)

    def _on_request(self, req: ClientRequest) -> None:
        try:
            command = decode_command(req.command)
        except DecodeError as exc:
            self._reply(req, ClientStatus.ERROR, message=f"bad command: {exc}")
            return
        logged = encode_logged(LoggedCommand(req.client_id, req.seq, command))

        def done(result: Any, error: BaseException | None) -> None:
            if error is None:
                if isinstance(result, InvalidCommandError):
                    self._reply(req, ClientStatus.ERROR, message=str(result))
                elif result is STALE:
                    self._reply(req, ClientStatus.ERROR, message="stale request (seq too old)")
                else:
                    self._reply(req, ClientStatus.OK, result=encode_result(result))
            elif isinstance(error, NotLeaderError):
                self._reply(req, ClientStatus.NOT_LEADER, leader_hint=error.leader_hint or "")
            elif isinstance(error, LeadershipLostError | NodeStoppedError):
                self._reply(req, ClientStatus.UNKNOWN, message=str(error))
            elif isinstance(error, NodeFailedError):
                self._reply(req, ClientStatus.ERROR, message=str(error))
            else:
                log.error("%s: command failed unexpectedly", self.peer_id, exc_info=error)
                self._reply(req, ClientStatus.UNKNOWN, message=f"{type(error).__name__}: {error}")

        self.node.apply_batch([logged], [CompletionFuture(done)])

    def _reply(
        self,
        req: ClientRequest,
        status: int,
        *,
        result: bytes = b"",
        leader_hint: str = "",
        message: str = "",
    ) -> None:
        self.transport.send(
            req.client_id,
            ClientResponse(req.request_id, status, result, leader_hint, message, self.peer_id),
        )

    def _on_status(self, req: StatusRequest) -> None:
        def done(status: Any, error: BaseException | None) -> None:
            body = status.to_json() if error is None else {"id": self.peer_id, "error": str(error)}
            self.transport.send(req.client_id, StatusResponse(req.request_id, self.peer_id, body))

        self.node.status_async(CompletionFuture(done))
