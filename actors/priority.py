"""Priority election (SOFAJRaft's electionPriority): which peer should lead when several could.
Pure; the Node acts.

Each peer has a priority (RaftOptions.election_priority, `launcher.py run --priority N`):
-1 disables the scheme for it (it campaigns as plain Raft does, and never yields), 0 means it
never campaigns (it still votes), and among the rest a higher value should lead.

A peer learns the others' priorities from their pre-vote answers (RequestVoteResponse.priority),
granted or not. Once it has a pre-vote quorum it waits (a short grace) for every voter to answer,
then yields - starts no election this round - when a voter that answered has a higher priority:
that one, live and leaderless too, campaigns at its own timeout and wins. A higher-priority peer
that cannot win (its log is behind, or it is cut off from a quorum) must not keep the cluster
leaderless, so each round given up lowers the priority waited for by a gap (SOFAJRaft's
decayPriorityGap 10, or a fifth of it if that is more) until this peer campaigns anyway; hearing
a leader resets it. Priorities only choose among peers that may win: they never touch the vote
rules, so safety is plain Raft's.
"""

from __future__ import annotations

DISABLED = -1
NEVER = 0
DECAY_GAP = 10


class PriorityElection:
    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.heard = DISABLED  # this round: the highest priority a voter answered with
        self.decay = 0  # lowered by this much after the rounds given up since the last leader

    @property
    def enabled(self) -> bool:
        return self.priority > NEVER

    @property
    def may_campaign(self) -> bool:
        return self.priority != NEVER

    def start_round(self) -> None:
        self.heard = DISABLED

    def heard_from(self, priority: int) -> None:
        self.heard = max(self.heard, priority)

    def should_yield(self) -> bool:
        """With a pre-vote quorum: whether to give this round to a higher-priority voter."""
        return self.enabled and self.heard - self.decay > self.priority

    def yielded(self) -> None:
        self.decay += max(DECAY_GAP, self.heard // 5)

    def leader_heard(self) -> None:
        self.decay = 0
