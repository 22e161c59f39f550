"""A Raft peer's role (the Node's state), on its own so that every part of the Node imports it."""

from __future__ import annotations

import enum


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    ERROR = "error"  # stopped serving after a fatal error; says why in status
    SHUTDOWN = "shutdown"
