"""A follower answers its leader's heartbeat on the dispatcher when its log is quiet.

Why: a heartbeat (an AppendEntries with no entries) asks only "do you follow me, and does your
log match mine at prev?". Through the LogManager it costs two thread hand-offs (to the
LogManager's thread, and its ack back to the transport's) for an answer that needs no disk
write, and heartbeats are what a leader's read round waits for (actors/read_only.py): they sit
on the path of every linearizable read.

When the answer may be given here (`answer`), everything else is as the LogManager would do it:
- the Router already checked that the Node follows the sender in the request's term (its
  published Leadership) with the same cluster id, and tells the Node LeaderContact as always;
- the log is quiet: every FollowerAppend handed to the LogManager has been answered
  (`LogView.appends`, an AppendLedger), so its acks are in the transport's queue before this
  one (one FIFO queue for every sender); every entry is durable (stable == last), so a success
  promises only what is on disk;
- the log matches at prev (the snapshot's last entry counts, as in the LogManager), and the
  heartbeat would not move the commit index: a commit advance goes through the LogManager,
  which owns it, so such a heartbeat takes the usual way.
Anything else (entries, a mismatch, a commit to advance, an append in flight, a LogManager in
ERROR) takes the LogManager's way, unchanged.
"""

from __future__ import annotations

from actors import trace
from actors.log_view import LogView
from transport.base import Transport
from transport.rpc import AppendEntriesRequest, AppendEntriesResponse


def answer(req: AppendEntriesRequest, peer_id: str, view: LogView, transport: Transport) -> bool:
    """Answer heartbeat `req` here (see the module docstring); whether it was answered."""
    if req.entries or not view.appends.quiet():
        return False
    last = view.last_index
    prev = req.prev_log_index
    if (
        view.stable_index != last
        or prev > last
        or prev < view.snapshot_index
        or view.term_at(prev) != req.prev_log_term
        or min(req.committed_index, prev) > view.committed_index
    ):
        return False
    if trace.ON:
        trace.mark("follower.ack")
    transport.send(
        req.leader_id,
        AppendEntriesResponse(
            term=req.term,
            success=True,
            last_log_index=last,
            peer_id=peer_id,
            seq=req.seq,
            req_term=req.term,
        ),
    )
    return True
