"""Leadership transfer (Raft dissertation §3.10; SOFAJRaft's transferLeadershipTo, etcd's
MsgTransferLeader): the state a leader keeps while it hands over. Pure; the Node acts.

1. The leader stops taking proposals (LeaderTransferringError: retryable), so its log stops
   growing, and arms a timer of one election timeout.
2. Once the target's match index reaches the leader's last index (its Replicator reports it in
   PeerContact, about once per heartbeat, and keeps sending what is missing meanwhile), the
   leader sends it TimeoutNowRequest. From then on it serves no lease read in this term: the
   voters grant the target's votes however recently they heard from this leader.
3. The target campaigns at once, skipping the pre-vote, with RequestVoteRequest.transfer set.
   Its log is at least as up to date as any voter's, so it wins unless it fails meanwhile; the
   old leader steps down on seeing the new term, and the transfer completes.
4. If the old leader still leads when the timer fires, the transfer fails
   (TransferLeadershipError) and proposals resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actors.configuration import Configuration
from actors.errors import UnknownPeerError


@dataclass
class Transfer:
    target: str
    reply: Any
    generation: int
    timeout_now_sent: bool = False

    def ready(self, target_match: int, last_index: int) -> bool:
        """Whether to send TimeoutNow now: not yet sent, and the target holds the whole log."""
        return not self.timeout_now_sent and target_match >= last_index


def pick_target(
    leader: str, conf: Configuration, requested: str | None, match: Mapping[str, int]
) -> str:
    """The voter to hand leadership to: `requested`, or (None) the most up-to-date other voter
    by `match` index (ties: the smallest id, so the choice is deterministic). Raises
    UnknownPeerError when `requested` is no voter or there is no other voter."""
    voters = conf.peers - {leader}
    if requested is not None:
        if requested not in voters:
            raise UnknownPeerError(f"{requested} is not another voter of {sorted(conf.peers)}")
        return requested
    if not voters:
        raise UnknownPeerError(f"{leader} is the only voter: no one to hand leadership to")
    return min(voters, key=lambda peer: (-match.get(peer, 0), peer))
