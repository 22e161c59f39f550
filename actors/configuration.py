"""Cluster configuration and quorum arithmetic. Pure functions, no actors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgpack


@dataclass(frozen=True, slots=True)
class Configuration:
    """Voting members, during joint consensus the old voting members too, and learners.

    A decision (a vote, a commit) needs a majority of `peers` and, when `old_peers` is not
    empty, a majority of `old_peers` as well (Raft dissertation §4.3). Learners receive the log
    but never count in a quorum and never campaign. Invariant (kept by `of`): no learner is a
    voter of `peers`.
    """

    peers: frozenset[str]
    old_peers: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, peers: Iterable[str], old_peers: Iterable[str] = (), learners: Iterable[str] = ()
    ) -> Configuration:
        voters = frozenset(peers)
        return cls(voters, frozenset(old_peers), frozenset(learners) - voters)

    @property
    def is_joint(self) -> bool:
        return bool(self.old_peers)

    @property
    def is_empty(self) -> bool:
        """No voter at all: a peer started with --join that has not been added yet."""
        return not self.peers and not self.old_peers

    def all_peers(self) -> frozenset[str]:
        """Every voter in force (both sets while joint)."""
        return self.peers | self.old_peers

    def members(self) -> frozenset[str]:
        """Everyone the leader replicates to: the voters and the learners."""
        return self.peers | self.old_peers | self.learners

    def stable(self) -> Configuration:
        """The configuration a joint one leads to (itself when not joint)."""
        return Configuration(self.peers, frozenset(), self.learners)

    def as_dict(self) -> dict[str, list[str]]:
        """{"voters": [...], "learners": [...]} (sorted; plus "old_voters" while joint)."""
        out = {"voters": sorted(self.peers), "learners": sorted(self.learners)}
        if self.old_peers:
            out["old_voters"] = sorted(self.old_peers)
        return out

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
        fields = [sorted(self.peers), sorted(self.old_peers)]
        if self.learners:
            fields.append(sorted(self.learners))
        return msgpack.packb(fields)

    @classmethod
    def decode(cls, data: bytes) -> Configuration:
        """The inverse of `encode`. Raises ValueError unless `data` is exactly that: two lists
        of peer ids (strings), the first not empty, and optionally a third (learners; what
        earlier versions wrote has none)."""
        try:
            value = msgpack.unpackb(data)
        except Exception as exc:
            raise ValueError(f"not msgpack: {exc}") from exc
        if type(value) is not list or len(value) not in (2, 3):
            raise ValueError("a configuration is [peers, old_peers(, learners)]")
        for members in value:
            if type(members) is not list or not all(type(p) is str for p in members):
                raise ValueError("peers, old_peers and learners are lists of peer ids")
        if not value[0]:
            raise ValueError("a configuration has at least one peer")
        return cls.of(*value)

    def __str__(self) -> str:
        text = ",".join(sorted(self.peers)) or "(none)"
        if self.old_peers:
            text += f" (joint with {','.join(sorted(self.old_peers))})"
        if self.learners:
            text += f" learners {','.join(sorted(self.learners))}"
        return text


def _majority_of(members: frozenset[str], granted: set[str]) -> bool:
    return len(members & granted) > len(members) // 2


def _majority_match(members: frozenset[str], match: Mapping[str, int]) -> int:
    if not members:
        return 0
    # Sorted descending, the value at position len//2 is held by a majority (len//2 + 1 peers).
    ranked = sorted((match.get(p, 0) for p in members), reverse=True)
    return ranked[len(members) // 2]


@dataclass(frozen=True, slots=True)
class ConfState:
    """The configuration in force at the end of a log: `conf`, from the CONFIGURATION entry at
    `index` (0: the bootstrap one, or the snapshot's at its index), and `previous`, the one
    before it (itself when there is none). Immutable, so a reader on another thread sees one
    consistent triple."""

    index: int
    conf: Configuration
    previous: Configuration


class ConfigurationLog:
    """The configurations of one log (SOFAJRaft's ConfigurationManager): a base (the bootstrap
    configuration, or the newest snapshot's at its index) and every CONFIGURATION entry after
    it, oldest first. Invariant: indexes strictly increase; the base is never truncated away
    (a suffix truncation never goes below the commit index, which is at least the snapshot's).
    """

    def __init__(self, base: Configuration, base_index: int = 0) -> None:
        self._entries: list[tuple[int, Configuration]] = [(base_index, base)]

    def state(self) -> ConfState:
        index, conf = self._entries[-1]
        previous = self._entries[-2][1] if len(self._entries) > 1 else conf
        return ConfState(index, conf, previous)

    def add(self, index: int, conf: Configuration) -> None:
        assert index > self._entries[-1][0], (index, self._entries[-1])
        self._entries.append((index, conf))

    def truncate_suffix(self, last_index_kept: int) -> None:
        while len(self._entries) > 1 and self._entries[-1][0] > last_index_kept:
            self._entries.pop()

    def set_base(self, index: int, conf: Configuration) -> None:
        """A snapshot at `index` holding `conf`: it replaces every configuration up to it."""
        self._entries = [(index, conf)] + [(i, c) for i, c in self._entries if i > index]
