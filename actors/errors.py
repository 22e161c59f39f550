"""Errors of the Raft layer. Every one derives from RaftError.

The user API (futures from `RaftNode.apply`) fails with these. Whether the command may still take
effect is part of each error, as in hashicorp/raft's docs, and is also on every instance as
`outcome_unknown`:

- outcome_unknown False, a definite refusal: the command never reached the log, so it will never
  be applied. NotLeaderError (retry at `leader_hint`), OverloadedError and
  LeaderTransferringError (back off, then retry), CommandTooLargeError, and NodeStoppedError /
  NodeFailedError raised before the command was appended. UnknownPeerError,
  ChangeInProgressError and TransferLeadershipError answer a leadership transfer.
- outcome_unknown True: the command was appended to this leader's log and may yet commit (under
  this leader before it failed, or under the next one). LeadershipLostError always; and
  NodeStoppedError / NodeFailedError when the node stopped or failed after appending it.
  A client must not assume either way (the KV service answers such a retry from its session).

`outcome_label` names the outcome in the metrics (`pykka_raft_proposals_total{outcome=...}`).
"""

from __future__ import annotations

import pykka


class RaftError(Exception):
    """Base class of every error this package raises."""

    outcome_unknown = False  # see the module docstring
    outcome_label = "error"


class OptionsError(RaftError, ValueError):
    """Invalid options, detected at construction."""


class NotLeaderError(RaftError):
    """This node does not lead: nothing was done. Retry at `leader_hint` (None: unknown)."""

    def __init__(self, leader_hint: str | None, message: str | None = None) -> None:
        super().__init__(message or f"not the leader; leader is {leader_hint or 'unknown'}")
        self.leader_hint = leader_hint

    outcome_label = "not_leader"


class LeadershipUnconfirmedError(NotLeaderError):
    """A read's heartbeat round got no quorum in time: this peer may no longer lead. Nothing
    was read; retry (here or elsewhere)."""

    def __init__(self, peer_id: str) -> None:
        super().__init__(None, f"{peer_id} could not confirm its leadership in time")


class LeadershipLostError(RaftError):
    """The leader stepped down before the command committed: its outcome is unknown."""

    outcome_unknown = True
    outcome_label = "leadership_lost"


class OverloadedError(RaftError):
    """The leader holds as many proposals in flight as it may (RaftOptions.max_pending_entries
    / max_pending_bytes): nothing was done. Retryable: back off, then try again."""

    outcome_label = "overloaded"


class LeaderTransferringError(OverloadedError):
    """The leader is handing leadership over (`RaftNode.transfer_leadership`) and takes no new
    proposals meanwhile: nothing was done. Retryable: back off, then retry (soon at the new
    leader, or here again if the transfer fails)."""

    outcome_label = "transferring"


class TransferLeadershipError(RaftError):
    """A leadership transfer did not complete within an election timeout (the target did not
    catch up, or did not win): this leader leads on and takes proposals again."""

    outcome_label = "transfer_failed"


class UnknownPeerError(RaftError, ValueError):
    """The peer named is not a voter (or, for a learner operation, a learner) of the
    configuration: nothing was done."""


class MembershipChangeError(RaftError, ValueError):
    """The membership change asked for is not one (e.g. it would leave no voter, or adds a
    voter as a learner): nothing was done."""


class CatchUpError(RaftError):
    """A peer being added did not catch up with the leader's log (it is unreachable, or stopped
    making progress for an election timeout): the membership change failed, nothing changed."""

    outcome_label = "catch_up_failed"


class ChangeInProgressError(RaftError):
    """Busy: another leadership transfer or membership change is under way (or the leader's
    own configuration entry is not committed yet). Nothing was done; retry once it ends."""

    outcome_label = "busy"


class CommandTooLargeError(RaftError, ValueError):
    """The command is larger than RaftOptions.max_command_bytes, so it could never be
    replicated in one message: nothing was done."""

    outcome_label = "too_large"


class _MaybeAppendedError(RaftError):
    """An error whose command may or may not have been appended, said by `outcome_unknown`."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class NodeStoppedError(_MaybeAppendedError):
    """The node is shutting down or stopped."""

    outcome_label = "stopped"


class NodeFailedError(_MaybeAppendedError):
    """The node entered ERROR (an actor or the state machine raised, storage failed, a safety
    invariant would have broken) and refuses to serve; `status()` says why."""

    outcome_label = "failed"


class ReadError(RaftError):
    """The state machine could not answer a read (`on_read` raised, or it has none): nothing
    changed, the node serves on. `cause` is what `on_read` raised (None: no on_read)."""

    outcome_label = "read_failed"

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class RaftTimeoutError(RaftError, TimeoutError, pykka.Timeout):
    """Waiting timed out (a future's `get(timeout)`, `RaftNode.wait_for_leader`, `status`):
    the one timeout type of the API. Nothing was cancelled: a command may still take
    effect. It is also a builtin TimeoutError and a pykka.Timeout, so either catch works."""

    outcome_unknown = True
    outcome_label = "timeout"


class DeadlockError(RaftError):
    """A future of this node was waited on (`get`) from the thread that must complete it (a
    state machine callback blocking on `apply` or `read`): it could never complete. Nothing
    was waited for; chain a callback instead, or wait from another thread."""


class InvariantViolationError(RaftError):
    """A Raft safety invariant would break (e.g. truncating at or below the commit index).
    Fatal: the node enters ERROR rather than continue with a possibly divergent log."""
