"""A peer process for the transport integration tests (run as a script, not collected).

    python peer_process.py --id ID [--max-frame-size N] [--send-hwm N]

Binds a ZmqTransport on 127.0.0.1, port 0, and talks JSON lines with the test:
- stdout: {"event": "bound", "endpoint": ...} once bound, then {"event": "received",
  "frame": <hex of the re-encoded message>} per delivered message, {"event": "stats", ...}
  when asked, and {"event": "stopped"} at the end;
- stdin: {"cmd": "add_peer", "id", "address"}, {"cmd": "send", "to", "frame": <hex>},
  {"cmd": "stats"}, {"cmd": "stop"} (EOF on stdin also stops).

Its deliver callback answers like a server: RequestVoteRequest -> RequestVoteResponse,
AppendEntriesRequest -> AppendEntriesResponse, ClientRequest -> ClientResponse echoing the
command, StatusRequest -> StatusResponse whose status holds the transport's counters.
Log records go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))

from transport.codec import decode, encode
from transport.rpc import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    ClientRequest,
    ClientResponse,
    ClientStatus,
    RequestVoteRequest,
    RequestVoteResponse,
    RpcMessage,
    StatusRequest,
    StatusResponse,
)
from transport.zmq_transport import ZmqTransport

_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--id", required=True)
    parser.add_argument("--max-frame-size", type=int, default=None)
    parser.add_argument("--send-hwm", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")

    options: dict[str, Any] = {}
    if args.max_frame_size is not None:
        options["max_frame_size"] = args.max_frame_size
    if args.send_hwm is not None:
        options["send_hwm"] = args.send_hwm
    me = args.id
    transport = ZmqTransport(me, "tcp://127.0.0.1:0", **options)

    def reply(message: RpcMessage) -> RpcMessage | None:
        if isinstance(message, RequestVoteRequest):
            return RequestVoteResponse(message.term, True, message.pre_vote, me, message.term)
        if isinstance(message, AppendEntriesRequest):
            last = message.prev_log_index + len(message.entries)
            return AppendEntriesResponse(message.term, True, last, me, message.seq, message.term)
        if isinstance(message, ClientRequest):
            return ClientResponse(message.request_id, ClientStatus.OK, message.command, "", "", me)
        if isinstance(message, StatusRequest):
            status = dataclasses.asdict(transport.stats)
            return StatusResponse(message.request_id, me, status)
        return None

    def deliver(message: RpcMessage) -> None:  # on the transport's I/O thread
        emit("received", frame=encode(message).hex())
        answer = reply(message)
        if answer is not None:
            transport.send(message.sender, answer)

    transport.start(deliver)
    try:
        emit("bound", endpoint=transport.bound_endpoint)
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "add_peer":
                transport.add_peer(command["id"], command["address"])
            elif command["cmd"] == "send":
                transport.send(command["to"], decode(bytes.fromhex(command["frame"])))
            elif command["cmd"] == "stats":
                emit("stats", **dataclasses.asdict(transport.stats))
            elif command["cmd"] == "stop":
                break
    finally:
        transport.stop()
        emit("stopped")


if __name__ == "__main__":
    main()
