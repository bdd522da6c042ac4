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

    def bytes8(self, data: bytes) -> Writer:
        return self.u8(_checked_len(data, 0xFF)).raw(data)

    def bytes16(self, data: bytes) -> Writer:
        return self.u16(_checked_len(data, 0xFFFF)).raw(data)

    def bytes24(self, data: bytes) -> Writer:
        return self.u24(_checked_len(data, 0xFFFFFF)).raw(data)

    def text16(self, text: str) -> Writer:
        return self.bytes16(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _checked_len(data: bytes, limit: int) -> int:
    if len(data) > limit:
        raise ValueError(f"field of {len(data)} bytes exceeds its {limit}-byte length prefix")
    return len(data)


class Reader:
    """Consumes fields from a byte string; every overrun is a ``decode_error``."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise _decode_error(
                f"truncated: wanted {n} bytes at offset {self._pos}, have {len(self._data) - self._pos}"
            )
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self._take(3), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def bytes8(self, *, max_len: int = 0xFF, min_len: int = 0) -> bytes:
        return self._bounded(self.u8(), min_len, max_len)

    def bytes16(self, *, max_len: int = 0xFFFF, min_len: int = 0) -> bytes:
        return self._bounded(self.u16(), min_len, max_len)

    def bytes24(self, *, max_len: int = 0xFFFFFF, min_len: int = 0) -> bytes:
        return self._bounded(self.u24(), min_len, max_len)

    def text16(self, *, max_len: int = 0xFFFF) -> str:
        data = self.bytes16(max_len=max_len)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _decode_error("text field is not valid UTF-8") from None

    def _bounded(self, n: int, min_len: int, max_len: int) -> bytes:
        if n < min_len or n > max_len:
            raise _decode_error(f"field length {n} outside [{min_len}, {max_len}]")
        return self._take(n)

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def done(self) -> None:
        """Insist the message was consumed exactly: trailing bytes are a decode error."""
        if self._pos != len(self._data):
            raise _decode_error(f"{len(self._data) - self._pos} trailing bytes")
