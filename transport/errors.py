"""Transport errors. All derive from TransportError."""

from __future__ import annotations


class TransportError(Exception):
    """Base class of every transport failure."""


class DecodeError(TransportError):
    """A frame from the network is not a valid message of our protocol.

    The only exception `transport.codec.decode` raises, whatever the input bytes: the receiving
    transport counts the frame as bad, logs it (rate-limited) and drops it (docs/DESIGN.md,
    principle 6).
    """


class EncodeError(TransportError):
    """A message cannot be put on the wire (not an RPC class, a value msgpack cannot pack, an
    out-of-range integer, non-contiguous entries, a non-JSON-like status).

    Always a programming error on the sending side, so it is raised to the caller of
    `encode` / `send` rather than dropped silently.
    """


class BindError(TransportError):
    """The transport could not bind its listening address (port in use, bad address)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot bind {address}: {reason}")
        self.address = address
        self.reason = reason
