"""A tiny, bounds-checked binary codec shared by every wire message in tlsotp.

Fields are written big-endian with explicit lengths, as TLS's presentation language does:
``u8``, ``u16``, ``u32`` integers and byte strings prefixed with a ``u8``, ``u16`` or ``u24``
length. Every read is bounds-checked and any malformation raises ``AlertError(decode_error)``,
so a hostile peer can only ever produce a typed refusal.
"""

from __future__ import annotations

from tlsotp.alerts import Alert, AlertError


def _decode_error(detail: str) -> AlertError:
    return AlertError(Alert.decode_error, detail)


class Writer:
    """Accumulates fields; ``getvalue()`` returns the encoding."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def u24(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(3, "big"))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(4, "big"))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    # The prefixed fields append their length and bytes directly (one call, not three):
    # the same checks in the same order as u8/u16/u24(_checked_len(...)).raw(data).

    def bytes8(self, data: bytes) -> Writer:
        parts = self._parts
        parts.append(_checked_len(data, 0xFF).to_bytes(1, "big"))
        parts.append(bytes(data))
        return self

    def bytes16(self, data: bytes) -> Writer:
        parts = self._parts
        parts.append(_checked_len(data, 0xFFFF).to_bytes(2, "big"))
        parts.append(bytes(data))
        return self

    def bytes24(self, data: bytes) -> Writer:
        parts = self._parts
        parts.append(_checked_len(data, 0xFFFFFF).to_bytes(3, "big"))
        parts.append(bytes(data))
        return self

    def text16(self, text: str) -> Writer:
        return self.bytes16(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _checked_len(data: bytes, limit: int) -> int:
    n = len(data)
    if n > limit:
        raise ValueError(f"field of {n} bytes exceeds its {limit}-byte length prefix")
    return n


class Reader:
    """Consumes fields from a byte string; every overrun is a ``decode_error``.

    Each method reads its bytes in place (no call per field through a common helper: the
    handshake decoders read dozens of fields per session), with the checks, their order and
    their messages of ``_take`` and ``_bounded``."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)

    def _truncated(self, n: int) -> AlertError:
        return _decode_error(f"truncated: wanted {n} bytes at offset {self._pos}, have {self._end - self._pos}")

    def _take(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > self._end:
            raise self._truncated(n)
        self._pos = end
        return self._data[pos:end]

    def u8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise self._truncated(1)
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise self._truncated(2)
        self._pos = pos + 2
        data = self._data
        return (data[pos] << 8) | data[pos + 1]

    def u24(self) -> int:
        pos = self._pos
        if pos + 3 > self._end:
            raise self._truncated(3)
        self._pos = pos + 3
        data = self._data
        return (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def bytes8(self, *, max_len: int = 0xFF, min_len: int = 0) -> bytes:
        pos = self._pos
        if pos >= self._end:
            raise self._truncated(1)
        n = self._data[pos]
        self._pos = pos = pos + 1
        return self._field(pos, n, min_len, max_len)

    def bytes16(self, *, max_len: int = 0xFFFF, min_len: int = 0) -> bytes:
        pos = self._pos
        if pos + 2 > self._end:
            raise self._truncated(2)
        data = self._data
        n = (data[pos] << 8) | data[pos + 1]
        self._pos = pos = pos + 2
        return self._field(pos, n, min_len, max_len)

    def bytes24(self, *, max_len: int = 0xFFFFFF, min_len: int = 0) -> bytes:
        pos = self._pos
        if pos + 3 > self._end:
            raise self._truncated(3)
        data = self._data
        n = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
        self._pos = pos = pos + 3
        return self._field(pos, n, min_len, max_len)

    def _field(self, pos: int, n: int, min_len: int, max_len: int) -> bytes:
        """The ``n`` bytes at ``pos`` (just after their length prefix), bounds first."""
        if n < min_len or n > max_len:
            raise _decode_error(f"field length {n} outside [{min_len}, {max_len}]")
        end = pos + n
        if end > self._end:
            raise self._truncated(n)
        self._pos = end
        return self._data[pos:end]

    def text16(self, *, max_len: int = 0xFFFF) -> str:
        data = self.bytes16(max_len=max_len)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _decode_error("text field is not valid UTF-8") from None

    def remaining(self) -> int:
        return self._end - self._pos

    def done(self) -> None:
        """Insist the message was consumed exactly: trailing bytes are a decode error."""
        if self._pos != self._end:
            raise _decode_error(f"{self._end - self._pos} trailing bytes")
