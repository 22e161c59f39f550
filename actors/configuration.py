"""Cluster configuration and quorum arithmetic. Pure functions, no actors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack


@dataclass(frozen=True, slots=True)
class Configuration:
    """Voting members, and during joint consensus the old voting members too.

    A decision (a vote, a commit) needs a majority of `peers` and, when `old_peers` is not
    empty, a majority of `old_peers` as well (Raft dissertation §4.3).
    """

    peers: frozenset[str]
    old_peers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, peers: Iterable[str], old_peers: Iterable[str] = ()) -> Configuration:
        return cls(frozenset(peers), frozenset(old_peers))

    @property
    def is_joint(self) -> bool:
        return bool(self.old_peers)

    def all_peers(self) -> frozenset[str]:
        return self.peers | self.old_peers

    def has_quorum(self, granted: Iterable[str]) -> bool:
        """Whether `granted` holds a majority of every member set in force."""
        got = set(granted)
        return _majority_of(self.peers, got) and (
            not self.old_peers or _majority_of(self.old_peers, got)
        )

    def quorum_match(self, match: Mapping[str, int]) -> int:
        """The highest index that a quorum holds, given each peer's match index (missing = 0)."""
        value = _majority_match(self.peers, match)
        if self.old_peers:
            value = min(value, _majority_match(self.old_peers, match))
        return value

    def encode(self) -> bytes:
        return msgpack.packb([sorted(self.peers), sorted(self.old_peers)])

    @classmethod
    def decode(cls, data: bytes) -> Configuration:
        """The inverse of `encode`. Raises ValueError unless `data` is exactly that: two
        lists of peer ids (strings), the first not empty."""
        try:
            value = msgpack.unpackb(data)
        except Exception as exc:
            raise ValueError(f"not msgpack: {exc}") from exc
        if type(value) is not list or len(value) != 2:
            raise ValueError("a configuration is [peers, old_peers]")
        peers, old_peers = value
        for members in (peers, old_peers):
            if type(members) is not list or not all(type(p) is str for p in members):
                raise ValueError("peers and old_peers are lists of peer ids")
        if not peers:
            raise ValueError("a configuration has at least one peer")
        return cls.of(peers, old_peers)

    def __str__(self) -> str:
        text = ",".join(sorted(self.peers))
        return f"{text} (joint with {','.join(sorted(self.old_peers))})" if self.old_peers else text


def _majority_of(members: frozenset[str], granted: set[str]) -> bool:
    return len(members & granted) > len(members) // 2


def _majority_match(members: frozenset[str], match: Mapping[str, int]) -> int:
    if not members:
        return 0
    # Sorted descending, the value at position len//2 is held by a majority (len//2 + 1 peers).
    ranked = sorted((match.get(p, 0) for p in members), reverse=True)
    return ranked[len(members) // 2]
