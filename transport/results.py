"""Results as they travel in ClientResponse.result: msgpack values (None, bool, int, float, str,
bytes, lists and str-keyed maps), decoded and validated on the client's side."""

from __future__ import annotations

from typing import Any

import msgpack

from transport.errors import DecodeError


def encode_result(value: Any) -> bytes:
    return msgpack.packb(value)


def decode_result(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise DecodeError(f"bad result: {exc}") from None


def decode_admin_result(data: bytes) -> dict[str, Any]:
    """An AdminRequest's answer: a str-keyed msgpack map (DecodeError otherwise)."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=0)
    except Exception as exc:
        raise DecodeError(f"bad admin result: {exc}") from exc
    if not isinstance(value, dict):
        raise DecodeError("an admin result is a map")
    return value
