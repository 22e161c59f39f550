"""Stage marks for the latency budget: where one command's time goes, hop by hop.

Off by default, and then a mark costs one module-attribute test at its call site:

    if trace.ON:
        trace.mark("leader.append")

On when the environment names a file prefix in PYKKA_RAFT_TRACE (every peer process the
launcher starts inherits it), or after `enable()`. Each mark records (stage, time.monotonic_ns())
in memory; at exit (or on `dump()`) the process writes them to `<prefix>.<pid>.trace`, one
"stage nanoseconds" line each. CLOCK_MONOTONIC is one clock for every process of a machine, so
the marks of a leader, its followers and a client line up. bench/bench_latency.py reads them:
with one client and one request in flight, every mark inside a request's window belongs to it.

The marks (their names say on which side they are made):

    client.send, client.receive        transport.raft_client, around one request
    leader.receive                     ClientServer, on the transport's thread
    leader.propose                     Node, handling Apply
    leader.append                      Node (its LeaderLog): indexes assigned, in memory
    leader.send                        Replicator: an AppendEntries leaves (entries or none)
    follower.receive                   the follower's transport thread: an AppendEntries in
    follower.node                      the follower's Node checks term and leader (off the
                                       path once it follows: the Router hands over)
    follower.append                    the follower's LogManager: appended, not yet synced
    follower.fsync, leader.fsync       LogManager: the batch is durable
    follower.ack                       the follower's LogManager: the answer leaves (or its
                                       Router, for a heartbeat on a quiet log)
    leader.ack                         Replicator: an AppendEntriesResponse in
    leader.commit                      BallotBox: a quorum holds it
    leader.apply                       FSMCaller: on_apply returned (its futures settle next)
    leader.read_start, leader.read_confirmed   Node: a ReadIndex round begins, is confirmed
    leader.read_apply                  FSMCaller: on_read returned
    leader.reply                       ClientServer: the response leaves

A process keeps at most MAX_MARKS marks (then stops recording: a benchmark's run is short).
"""

from __future__ import annotations

import atexit
import os
import threading
import time

ENV = "PYKKA_RAFT_TRACE"

# The peers' stages of one put and one linearizable get, in pipeline order (between
# client.send and client.receive).
PUT_STAGES = (
    "leader.receive",
    "leader.propose",
    "leader.append",
    "leader.send",
    "follower.receive",
    "follower.append",
    "follower.fsync",
    "follower.ack",
    "leader.ack",
    "leader.commit",
    "leader.apply",
    "leader.reply",
)
GET_STAGES = (
    "leader.receive",
    "leader.read_start",
    "leader.send",
    "follower.receive",
    "follower.ack",
    "leader.ack",
    "leader.read_confirmed",
    "leader.read_apply",
    "leader.reply",
)
MAX_MARKS = 4_000_000

ON = False
_prefix: str | None = None
_marks: list[tuple[str, int]] = []
_lock = threading.Lock()  # only for dump against a concurrent enable; marks append lock-free


def mark(stage: str) -> None:
    """Record `stage` now (call only under `if trace.ON:`). list.append is atomic in CPython,
    so marks from several threads need no lock."""
    if len(_marks) < MAX_MARKS:
        _marks.append((stage, time.monotonic_ns()))


def enable(prefix: str) -> None:
    """Start recording; `dump()` (and exit) writes to `<prefix>.<pid>.trace`."""
    global ON, _prefix
    with _lock:
        if _prefix is None:
            atexit.register(dump)
        _prefix = prefix
        ON = True


def marks() -> list[tuple[str, int]]:
    """A copy of what was recorded so far."""
    return list(_marks)


def dump() -> str | None:
    """Write the marks recorded so far (and forget them); returns the file, or None if off."""
    with _lock:
        if _prefix is None:
            return None
        taken = _marks[:]
        del _marks[: len(taken)]
        path = f"{_prefix}.{os.getpid()}.trace"
        with open(path, "a", encoding="ascii") as out:
            out.writelines(f"{stage} {ns}\n" for stage, ns in taken)
        return path


def read(path: str) -> list[tuple[str, int]]:
    """The marks a `dump` wrote."""
    with open(path, encoding="ascii") as lines:
        return [(stage, int(ns)) for stage, ns in (line.split() for line in lines)]


if os.environ.get(ENV):
    enable(os.environ[ENV])
