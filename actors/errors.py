"""Errors of the Raft layer. Every one derives from RaftError.

The user API (futures from `RaftNode.apply`) fails with these. Whether the command may still take
effect is part of each error's meaning, as in hashicorp/raft's docs:
- NotLeaderError: definitely not applied; retry at `leader_hint`.
- LeadershipLostError: outcome UNKNOWN (it was appended; it may yet commit under a new leader).
- NodeStoppedError, NodeFailedError: the node cannot serve; for commands accepted before, unknown.
"""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error this package raises."""


class OptionsError(RaftError, ValueError):
    """Invalid options, detected at construction."""


class NotLeaderError(RaftError):
    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader; leader is {leader_hint or 'unknown'}")
        self.leader_hint = leader_hint


class LeadershipLostError(RaftError):
    """The leader stepped down before the command committed: its outcome is unknown."""


class NodeStoppedError(RaftError):
    """The node is shutting down or stopped."""


class NodeFailedError(RaftError):
    """The node entered ERROR (e.g. its state machine raised) and refuses to serve."""


class InvariantViolationError(RaftError):
    """A Raft safety invariant would break (e.g. truncating at or below the commit index).
    Fatal: the node enters ERROR rather than continue with a possibly divergent log."""
