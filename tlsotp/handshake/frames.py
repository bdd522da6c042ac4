"""Frames: the unit the shell carries, one netstring payload each.

A frame is ``u8 content_type || body``. The netstring already delimits it, so no length
field is repeated here; the content type says whether the body is a handshake message, an
alert or protected application data.
"""

from __future__ import annotations

import enum

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.limits import MAX_FRAME


class ContentType(enum.IntEnum):
    """TLS's record content type codes, so a reader of a hex dump recognises them."""

    alert = 21
    handshake = 22
    application_data = 23


#: The known types by wire code: a dict lookup, where ContentType(code) is several Python calls.
_CONTENT_TYPES: dict[int, ContentType] = {t.value: t for t in ContentType}


def encode_frame(content_type: ContentType, body: bytes) -> bytes:
    frame = bytes([content_type]) + body
    if len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes exceeds MAX_FRAME={MAX_FRAME}")
    return frame


def split_frame(frame: bytes) -> tuple[ContentType, bytes]:
    """Separate content type and body; refuses empty, oversized and unknown-type frames."""
    if len(frame) > MAX_FRAME:
        raise AlertError(Alert.record_overflow, f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
    if not frame:
        raise AlertError(Alert.decode_error, "empty frame")
    content_type = _CONTENT_TYPES.get(frame[0])
    if content_type is None:
        raise AlertError(Alert.unexpected_message, f"unknown content type {frame[0]}")
    return content_type, bytes(frame[1:])
