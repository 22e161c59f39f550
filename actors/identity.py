"""A cluster's identity: the id every peer of one cluster holds, and which leaders it accepts.

Membership moves, so a peer's own log cannot always name its leader: a voter cut off while the
configuration moved on (peers added, the ones it knew removed) hears from a leader its log has
never seen. Names alone cannot tell that leader from a peer of another cluster that reuses an
address (a data directory restored beside a new cluster, a port handed to a new cluster). The
cluster id can:

- Bootstrap: a brand-new peer started to found a cluster (not `join`) takes the id derived from
  the founding configuration and `NodeOptions.cluster_token` (`derive_cluster_id`): every
  founding peer derives the same id without talking to the others (as etcd derives its
  cluster id from --initial-cluster and --initial-cluster-token). Two clusters founded with
  the same peers and the same token share an id: give each cluster its own token.
- Join: a brand-new joining peer has no id until its first leader reaches it (any leader that
  carries an id, while the peer holds nothing at all: only a leader whose configuration lists
  the peer replicates to it, and the hints it was started with may all be gone); it adopts that
  leader's id, durably before it appends anything (the LogManager persists the id and then the
  entries, in mailbox order).
- Every RequestVote, AppendEntries and InstallSnapshot carries the sender's id. `compare` says
  what the receiver makes of it: the same id lets a peer follow (and vote for) a peer its log
  does not name; another id is refused whatever the name; when either side has no id (a peer
  that is joining, or data from before clusters had ids), names decide, as they always did.

The id guards against accidents, not attackers: it is not secret. Authentication is what
--keys is for (transport/security.py).

Persisted in the meta storage (storage/meta_storage.py) and never changed once set.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Iterable

from storage.base import MetaStorage
from storage.meta_storage import check_cluster_id

log = logging.getLogger(__name__)


class Kinship(enum.Enum):
    SAME = "same"  # both ids known and equal: one cluster, whatever the names say
    OTHER = "other"  # both known and different: refuse, whatever the names say
    UNKNOWN = "unknown"  # one side has no id: names decide


def derive_cluster_id(founders: Iterable[str], token: str = "") -> str:
    """The id of the cluster founded by `founders` with `token`: 16 hex digits, the same on
    every founding peer (the order of the peers does not matter)."""
    material = "\n".join(["pykka-raft cluster", token, *sorted(set(founders))])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def compare(ours: str, theirs: str) -> Kinship:
    """What a request carrying `theirs` is to a peer holding `ours`. An id no peer could hold
    (too long) is another cluster's: it must never be adopted."""
    if not check_cluster_id(theirs):
        return Kinship.OTHER
    if not ours or not theirs:
        return Kinship.UNKNOWN
    return Kinship.SAME if ours == theirs else Kinship.OTHER


def bootstrap_identity(
    meta: MetaStorage, founding: bool, fresh: bool, founders: Iterable[str], token: str, peer: str
) -> str:
    """The peer's cluster id, setting it (durably) first where this start founds a cluster:
    `founding` (not joining) and `fresh` (no term, log or snapshot yet). A peer with state but
    no id (written before clusters had ids) keeps none: names decide for it."""
    if not meta.cluster_id and founding and fresh:
        meta.set_cluster_id(derive_cluster_id(founders, token))
        log.info("%s: founding cluster %s", peer, meta.cluster_id)
    elif not meta.cluster_id and not fresh:
        log.warning("%s: this peer's data names no cluster; accepting leaders by name", peer)
    return meta.cluster_id
