"""A small CRC-protected record file: the format of the term/vote file and of snapshot metas.

Version 1 (integers little-endian)::

    magic     8s   names the kind of file (FileMetaStorage: b"PKRFTMET", snapshots: b"PKRFTSNP")
    version   u16  1
    reserved  u16  0
    crc       u32  CRC32 of the 12 bytes above followed by the body
    body      a msgpack map, whose fields the kind of file defines

Pure functions; the callers write the bytes atomically and check the body's fields.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from storage.errors import CorruptLogError

FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
_CRC_AT = 12  # the CRC covers the header bytes before it, and the body


def encode_framed(magic: bytes, body: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    prefix = HEADER.pack(magic, FORMAT_VERSION, 0, 0)[:_CRC_AT]
    return prefix + struct.pack("<I", zlib.crc32(packed, zlib.crc32(prefix))) + packed


def decode_framed(
    data: bytes, magic: bytes, error: type[CorruptLogError], what: str, where: str
) -> dict[Any, Any]:
    """The body map of a framed record; `error(message, where, offset)` when anything about it
    is wrong (`what` names the file in messages: "meta file", "snapshot meta")."""
    if len(data) < HEADER.size:
        raise error(f"{what} is truncated", where, 0)
    found, version, _reserved, crc = HEADER.unpack_from(data)
    if found != magic:
        raise error(f"bad magic {found!r}", where, 0)
    body = data[HEADER.size :]
    if zlib.crc32(body, zlib.crc32(data[:_CRC_AT])) != crc:
        raise error(f"{what} CRC mismatch", where, 0)
    if version != FORMAT_VERSION:
        raise error(f"unsupported {what} format version {version}", where, 8)
    try:
        decoded: Any = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise error(f"{what} body does not decode: {exc}", where, HEADER.size) from exc
    if not isinstance(decoded, dict):
        raise error(f"{what} body is not a map", where, HEADER.size)
    return decoded
