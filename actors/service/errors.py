"""Errors of the KV service. Every one derives from ServiceError."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of the service's errors."""


class InvalidCommandError(ServiceError):
    """A log entry that is not a valid KV command (only a buggy or hostile proposer makes one).
    Returned, not raised, by the state machine: every replica answers it alike."""
