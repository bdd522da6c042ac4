"""The codec's Reader and Writer against their previous, plainer implementation.

The Reader reads each field in place instead of through one ``_take`` per field, and the Writer
appends a prefixed field in one call: for every input (hypothesis: hostile bytes and random
sequences of reads with random bounds), each read must give the same value or the same
``decode_error`` with the same detail, and each encoding the same bytes or the same ValueError.
The reference below is the implementation as it was (tlsotp 8f7a56e), kept verbatim.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader, Writer
from tlsotp.handshake.frames import ContentType, split_frame
from tlsotp.handshake.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    HandshakeType,
    KeyShare,
    KeyTransport,
    ServerHello,
    encode_handshake,
    split_handshake,
)

READS = ("u8", "u16", "u24", "u32", "u64", "raw", "bytes8", "bytes16", "bytes24", "text16", "remaining", "done")


def outcome(call: Any) -> tuple[str, object]:
    try:
        return "value", call()
    except AlertError as exc:
        return "alert", (exc.alert, exc.detail)
    except (ValueError, OverflowError, TypeError) as exc:
        return type(exc).__name__, str(exc)


read_step = st.tuples(
    st.sampled_from(READS),
    st.integers(min_value=-2, max_value=40),  # raw's n
    st.integers(min_value=0, max_value=300),  # min_len
    st.one_of(st.none(), st.integers(min_value=0, max_value=70000)),  # max_len (None: the default)
)


class ReaderEquivalenceTests(unittest.SynchronousTestCase):
    @given(data=st.binary(max_size=80), steps=st.lists(read_step, max_size=12))
    def test_every_read_as_before(self, data: bytes, steps: list[tuple[str, int, int, int | None]]) -> None:
        mine, ref = Reader(data), RefReader(data)
        for name, n, min_len, max_len in steps:
            def call(reader: Any) -> Any:
                method = getattr(reader, name)
                if name == "raw":
                    return method(n)
                if name.startswith("bytes"):
                    return method(min_len=min_len) if max_len is None else method(min_len=min_len, max_len=max_len)
                if name == "text16":
                    return method() if max_len is None else method(max_len=max_len)
                return method()

            got, want = outcome(lambda: call(mine)), outcome(lambda: call(ref))
            self.assertEqual(got, want, name)
            self.assertEqual(mine.remaining(), ref.remaining())
            if got[0] != "value":
                break  # a decoder stops at its first refusal

    def test_truncated_prefix_and_body_messages(self) -> None:
        for data in (b"", b"\x00", b"\x00\x05ab", b"\x00\x00\x05abc", b"\x05ab"):
            for name in ("u8", "u16", "u24", "bytes8", "bytes16", "bytes24"):
                self.assertEqual(outcome(getattr(Reader(data), name)), outcome(getattr(RefReader(data), name)))
        error = self.assertRaises(AlertError, Reader(b"\x00\x05ab").bytes16)
        self.assertEqual((error.alert, error.detail), (Alert.decode_error, "truncated: wanted 5 bytes at offset 2, have 2"))


write_step = st.one_of(
    st.tuples(st.sampled_from(("u8", "u16", "u24", "u32", "u64")), st.integers(min_value=-1, max_value=2**65)),
    st.tuples(st.sampled_from(("raw", "bytes8", "bytes16")), st.binary(max_size=300)),
    st.tuples(st.just("bytes24"), st.binary(max_size=300)),
    st.tuples(st.just("text16"), st.text(max_size=40)),
)


class WriterEquivalenceTests(unittest.SynchronousTestCase):
    @given(steps=st.lists(write_step, max_size=8))
    def test_every_encoding_as_before(self, steps: list[tuple[str, Any]]) -> None:
        mine, ref = Writer(), RefWriter()
        for name, value in steps:
            got = outcome(lambda: getattr(mine, name)(value) and None)
            want = outcome(lambda: getattr(ref, name)(value) and None)
            self.assertEqual(got, want, name)
            if got[0] != "value":
                return
        self.assertEqual(mine.getvalue(), ref.getvalue())

    def test_oversized_fields_refused_with_the_same_message(self) -> None:
        for name, limit in (("bytes8", 0xFF), ("bytes16", 0xFFFF), ("bytes24", 0xFFFFFF)):
            data = bytes(limit + 1)
            self.assertEqual(outcome(lambda: getattr(Writer(), name)(data)), outcome(lambda: getattr(RefWriter(), name)(data)))


def ref_split_handshake(data: bytes) -> tuple[HandshakeType, bytes]:
    """messages.split_handshake as it was."""
    r = RefReader(data)
    code = r.u8()
    body = r.bytes24()
    r.done()
    try:
        return HandshakeType(code), body
    except ValueError:
        raise AlertError(Alert.unexpected_message, f"unknown handshake message type {code}") from None


def ref_split_frame(frame: bytes) -> tuple[ContentType, bytes]:
    """frames.split_frame's type decoding as it was (the size checks are unchanged)."""
    if len(frame) > 16384:
        raise AlertError(Alert.record_overflow, f"frame of {len(frame)} bytes exceeds 16384")
    if not frame:
        raise AlertError(Alert.decode_error, "empty frame")
    try:
        content_type = ContentType(frame[0])
    except ValueError:
        raise AlertError(Alert.unexpected_message, f"unknown content type {frame[0]}") from None
    return content_type, bytes(frame[1:])


def header(code: int, length: int) -> bytes:
    return bytes([code]) + length.to_bytes(3, "big")


handshake_bytes = st.one_of(
    st.binary(max_size=12),
    st.builds(lambda c, b: header(c, len(b)) + b, st.integers(0, 255), st.binary(max_size=40)),
    st.builds(lambda c, b, d: header(c, max(0, len(b) + d)) + b, st.integers(0, 255), st.binary(max_size=40), st.integers(-3, 3)),
    st.builds(lambda t, b: header(t, len(b)) + b, st.sampled_from(list(HandshakeType)), st.binary(max_size=40)),
)

handshake_messages = st.one_of(
    st.builds(
        ClientHello,
        st.lists(st.integers(0, 0xFFFF), max_size=3).map(tuple),
        st.binary(min_size=32, max_size=32),
        st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple),
        st.lists(st.builds(KeyShare, st.integers(0, 0xFFFF), st.binary(max_size=100)), max_size=3).map(tuple),
    ),
    st.builds(ServerHello, st.integers(0, 0xFFFF), st.binary(min_size=32, max_size=32), st.integers(0, 0xFFFF), st.binary(max_size=97)),
    st.builds(Certificate, st.lists(st.binary(max_size=300), max_size=3).map(tuple)),
    st.builds(CertificateVerify, st.integers(0, 0xFFFF), st.binary(max_size=100)),
    st.builds(KeyTransport, st.binary(max_size=300)),
    st.builds(Finished, st.binary(max_size=64)),
)


class HandshakeFramingEquivalenceTests(unittest.SynchronousTestCase):
    """split_handshake decodes a well-formed header in place and looks types up in a dict;
    split_frame likewise; encode_handshake writes the header as one integer."""

    @given(data=handshake_bytes)
    def test_split_handshake_as_before(self, data: bytes) -> None:
        self.assertEqual(outcome(lambda: split_handshake(data)), outcome(lambda: ref_split_handshake(data)))

    @given(
        frame=st.one_of(
            st.binary(max_size=20), st.builds(lambda t, n: bytes([t]) + bytes(n), st.integers(0, 255), st.integers(16380, 16390))
        )
    )
    def test_split_frame_as_before(self, frame: bytes) -> None:
        self.assertEqual(outcome(lambda: split_frame(frame)), outcome(lambda: ref_split_frame(frame)))

    @given(message=handshake_messages)
    def test_encode_handshake_as_before_and_round_trips(self, message: Any) -> None:
        raw = encode_handshake(message)
        self.assertEqual(raw, RefWriter().u8(message.TYPE).bytes24(message.encode_body()).getvalue())
        self.assertEqual(split_handshake(raw), (message.TYPE, message.encode_body()))

    def test_oversized_body_refused_as_before(self) -> None:
        message = Finished(bytes(0x1000000))
        self.assertEqual(
            outcome(lambda: encode_handshake(message)),
            outcome(lambda: RefWriter().u8(message.TYPE).bytes24(message.encode_body()).getvalue()),
        )
        self.assertEqual(outcome(lambda: encode_handshake(message))[0], "ValueError")


# -- the reference: tlsotp/codec.py's Writer and Reader as they were ------------------------


class RefWriter:
    """The Writer as it was."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> RefWriter:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u16(self, value: int) -> RefWriter:
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def u24(self, value: int) -> RefWriter:
        self._parts.append(value.to_bytes(3, "big"))
        return self

    def u32(self, value: int) -> RefWriter:
        self._parts.append(value.to_bytes(4, "big"))
        return self

    def u64(self, value: int) -> RefWriter:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def raw(self, data: bytes) -> RefWriter:
        self._parts.append(bytes(data))
        return self

    def bytes8(self, data: bytes) -> RefWriter:
        return self.u8(_ref_checked_len(data, 0xFF)).raw(data)

    def bytes16(self, data: bytes) -> RefWriter:
        return self.u16(_ref_checked_len(data, 0xFFFF)).raw(data)

    def bytes24(self, data: bytes) -> RefWriter:
        return self.u24(_ref_checked_len(data, 0xFFFFFF)).raw(data)

    def text16(self, text: str) -> RefWriter:
        return self.bytes16(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _ref_checked_len(data: bytes, limit: int) -> int:
    if len(data) > limit:
        raise ValueError(f"field of {len(data)} bytes exceeds its {limit}-byte length prefix")
    return len(data)


class RefReader:
    """The Reader as it was."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise AlertError(
                Alert.decode_error,
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
            raise AlertError(Alert.decode_error, "text field is not valid UTF-8") from None

    def _bounded(self, n: int, min_len: int, max_len: int) -> bytes:
        if n < min_len or n > max_len:
            raise AlertError(Alert.decode_error, f"field length {n} outside [{min_len}, {max_len}]")
        return self._take(n)

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def done(self) -> None:
        """Insist the message was consumed exactly: trailing bytes are a decode error."""
        if self._pos != len(self._data):
            raise AlertError(Alert.decode_error, f"{len(self._data) - self._pos} trailing bytes")
