"""The wipe nemesis: a killed follower loses its whole data directory, and comes back empty.

Raft assumes that durable state survives, so a wipe is only safe under a rule (the same one
the simulator's `wipe_one` follows); outside it, the nemesis itself would lose data:

- Its votes: an empty peer votes again in terms where it already voted, so two leaders could
  win the same term. Safe once every other peer's term is at least the wiped peer's durable
  term: every later candidate then campaigns in a term the wiped peer never voted in.
- Its entries: an entry it acknowledged may be committed with its help and held by only a
  minority of the others. Safe once every other peer has applied everything the wiped peer's
  disk held (read after the kill, so it counts every acknowledgement it ever sent).
- Until it has caught up, it is a voter without data: one more fault could let it help elect
  a leader lacking committed entries, so the injector starts no fault meanwhile.

When the rule does not hold within the give-up time, the peer restarts with its data intact
(counted as "wipe-abandoned").
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.service.local_peer import LocalPeer
from storage.log_storage import SegmentLogStorage
from storage.meta_storage import FileMetaStorage
from storage.snapshot_storage import SnapshotStorage


@dataclass
class Wipe:
    """One wipe in progress. `stage`: down -> restarting -> catching-up."""

    peer: str
    peer_dir: Path
    term: int  # its durable term after the kill
    last_index: int  # the last index its disk held (log or snapshot) after the kill
    give_up: float  # monotonic time after which it restarts unwiped
    stage: str = "down"
    wiped: bool = False
    catch_up_to: int = 0  # the leader's commit index when it came back
    paused_until: float = 0.0

    @classmethod
    def after_kill(cls, peer: LocalPeer, give_up: float) -> Wipe:
        """Read what the killed `peer` left on disk."""
        assert not peer.running, "read a peer's disk only once it is dead"
        peer_dir = peer.config.peer_dir
        meta = FileMetaStorage(peer_dir / "meta")
        term = meta.term
        meta.close()
        log = SegmentLogStorage(peer_dir / "log", sync=True)
        last = log.last_log_index()
        log.close()
        snapshot = SnapshotStorage(peer_dir / "snapshot").latest()
        last = max(last, snapshot.last_index if snapshot is not None else 0)
        return cls(peer.id, peer_dir, term, last, give_up)

    def why_not(self, others: Sequence[dict[str, Any]]) -> str | None:
        """What keeps the rule (module docstring) from holding, given the other peers'
        statuses; None when it holds."""
        for status in others:
            who = status.get("id", "?")
            if "applied_index" not in status:
                return f"{who} is not answering"
            if status["term"] < self.term:
                return f"{who} is at term {status['term']} < {self.term}"
            if status["applied_index"] < self.last_index:
                return f"{who} has applied {status['applied_index']} < {self.last_index}"
        return None

    def safe_to_wipe(self, others: Sequence[dict[str, Any]]) -> bool:
        return self.why_not(others) is None

    def wipe(self, peer: LocalPeer) -> None:
        assert not peer.running and peer.id == self.peer
        shutil.rmtree(self.peer_dir)
        self.wiped = True

    def describe(self) -> str:
        return f"term {self.term}, disk up to index {self.last_index}"
