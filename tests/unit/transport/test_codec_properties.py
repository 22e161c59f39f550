"""Property tests of transport.codec: valid messages round-trip, and no input bytes whatsoever
make decode raise anything but DecodeError (docs/DESIGN.md, principle 6)."""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.transport.messages import any_message
from transport.codec import decode, encode
from transport.errors import DecodeError

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")),
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_or_reject(frame: bytes, max_frame_size: int | None = None) -> None:
    """Decode must either raise DecodeError or return a message that is itself valid, i.e. that
    re-encodes to a frame decoding to an equal message."""
    try:
        message = decode(frame) if max_frame_size is None else decode(frame, max_frame_size)
    except DecodeError:
        return
    assert decode(encode(message)) == message


@given(any_message)
@FUZZ
def test_round_trip(message: Any) -> None:
    frame = encode(message)
    assert decode(frame) == message
    assert encode(decode(frame)) == frame  # canonical: one message, one frame


@given(st.binary(max_size=300))
@FUZZ
def test_random_bytes(frame: bytes) -> None:
    decode_or_reject(frame)


@given(st.binary(max_size=40).map(lambda tail: b"\x95\x01" + tail))
@FUZZ
def test_random_bytes_after_a_plausible_header(frame: bytes) -> None:
    decode_or_reject(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, removed, inserted, truncated or extended."""
    frame = bytearray(encode(draw(any_message)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "extend"]))
        position = draw(st.integers(0, max(0, len(frame) - 1)))
        if operation == "flip" and frame:
            frame[position] ^= draw(st.integers(1, 255))
        elif operation == "delete" and frame:
            del frame[position]
        elif operation == "insert":
            frame.insert(position, draw(st.integers(0, 255)))
        elif operation == "truncate":
            del frame[position:]
        else:
            frame.extend(draw(st.binary(min_size=1, max_size=8)))
    return bytes(frame)


@given(mutated_frames())
@FUZZ
def test_mutated_frames(frame: bytes) -> None:
    decode_or_reject(frame)


# Values of every msgpack kind, to swap into a valid message's fields.
odd_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.binary(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def restructured_frames(draw: st.DrawFn) -> bytes:
    """A valid message re-packed with some fields (or some items inside its entries or status)
    replaced by values of other types, or with fields added or removed."""
    values: list[Any] = msgpack.unpackb(encode(draw(any_message)))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(values) - 1))
        target = values[position]
        operation = draw(st.sampled_from(["replace", "replace inner", "append", "remove"]))
        if operation == "replace inner" and isinstance(target, list) and target:
            target[draw(st.integers(0, len(target) - 1))] = draw(odd_values)
        elif operation == "replace inner" and isinstance(target, dict) and target:
            target[draw(st.sampled_from(list(target)))] = draw(odd_values)
        elif operation == "append":
            values.append(draw(odd_values))
        elif operation == "remove" and len(values) > 1:
            del values[position]
        else:
            values[position] = draw(odd_values)
    return msgpack.packb(values, use_bin_type=True)


@given(restructured_frames())
@FUZZ
def test_restructured_frames(frame: bytes) -> None:
    decode_or_reject(frame)


@given(odd_values)
@FUZZ
def test_arbitrary_msgpack_values(value: Any) -> None:
    decode_or_reject(msgpack.packb(value, use_bin_type=True))


@given(any_message, st.integers(0, 50))
@FUZZ
def test_frame_size_limit(message: Any, slack: int) -> None:
    frame = encode(message)
    assert decode(frame, len(frame) + slack) == message
    if len(frame) > slack:
        try:
            decode(frame, len(frame) - 1 - slack)
        except DecodeError as exc:
            assert "exceeds the limit" in str(exc)
        else:
            raise AssertionError("an oversized frame was accepted")
