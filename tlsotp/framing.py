"""Netstring framing, sans-I/O: bytes in, frames (or one typed framing error) out.

Every tlsotp connection (a party's secure channel, the TTP's request and the requester's reply)
carries its messages as netstrings, ``<length>:<payload>,``. This module is the one place that
parses them, in h11's shape: the shell hands whatever the transport delivered to
``NetstringDecoder.receive_data`` and then calls ``next_event`` until it says ``NEED_DATA``;
each call gives a ``Frame``, ``NEED_DATA``, or a ``FramingError`` that says what was wrong
(``FrameTooLong`` with the bound, or ``MalformedFrame``). ``encode`` is the other direction.

The rules, exactly as enforced here:

* the length is one or more ASCII digits ``0``-``9``, without sign or spaces, and without a
  leading zero (``0`` alone is the empty payload's length, so ``0:,`` is a frame and ``00:`` or
  ``01:`` is malformed);
* it ends with ``:``, then exactly that many payload bytes, then ``,``;
* a length over the decoder's ``max_length`` is ``FrameTooLong`` as soon as the digits received
  so far prove it (``max_length`` 16384: at the fifth ``9`` of ``99999``), before a ``:`` and
  before any payload is buffered;
* anything else (a non-digit where the length should be, a leading zero, ``:`` with no digits,
  a byte other than ``,`` after the payload) is ``MalformedFrame``, detected at that byte.

After a framing error the decoder is finished: frames completed before the bad byte are still
delivered, in order, then the error, which ``next_event`` returns again on every later call;
data received after it is dropped. The bytes it holds of the netstring not yet complete never
exceed ``max_buffered`` (``len(str(max_length)) + 1 + max_length``: the longest length prefix,
the colon and the longest payload; the closing comma completes the frame).

Why not Twisted's ``NetstringReceiver``: the only way to learn *which* framing error it found is
to override its private parse-error hook and re-parse its private receive buffer (a
private API may change in any Twisted release, and the buffer it exposes is not even the start
of the netstring once a payload is under way, so the old shells needed a copy of their own to
tell an over-long frame from a malformed one). A decoder of our own reports the kind in its
return value, is tested without a reactor or a transport (every chunking of every input, by
hypothesis), and is the same code under all three shells, which only map its errors to their
refusals: ``record_overflow`` or ``decode_error`` for a party, ``too_long`` or ``decode_error``
for the TTP, ``decode_error`` for the requester. What goes on the wire is unchanged.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Literal, Union

__all__ = [
    "NEED_DATA",
    "Frame",
    "FrameTooLong",
    "FramingError",
    "MalformedFrame",
    "NeedData",
    "NetstringDecoder",
    "NetstringEvent",
    "encode",
    "netstring_size",
]

_COLON = ord(":")
_COMMA = ord(",")
_ZERO = ord("0")
_NINE = ord("9")


class NeedData(enum.Enum):
    """``next_event``'s answer when no complete frame (and no error) is waiting."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Literal[NeedData.NEED_DATA] = NeedData.NEED_DATA


@dataclass(frozen=True)
class Frame:
    """One netstring's payload."""

    payload: bytes


@dataclass(frozen=True)
class FramingError:
    """The peer's bytes are not a netstring this decoder accepts; the connection must end."""

    @property
    def detail(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class FrameTooLong(FramingError):
    """The length prefix announces more than ``limit`` bytes; ``digits`` are the digits that
    proved it (the peer may have sent more: they were not read)."""

    limit: int
    digits: str

    @property
    def detail(self) -> str:
        return f"a frame of at least {self.digits} bytes exceeds the {self.limit}-byte limit"


@dataclass(frozen=True)
class MalformedFrame(FramingError):
    """Not a netstring: ``reason`` says what was found where."""

    reason: str

    @property
    def detail(self) -> str:
        return f"malformed netstring: {self.reason}"


NetstringEvent = Union[Frame, FramingError, NeedData]


def netstring_size(payload_length: int) -> int:
    """Bytes a payload takes on the wire as a netstring: ``LEN:`` + payload + ``,``."""
    return len(str(payload_length)) + 2 + payload_length


def encode(frame: bytes) -> bytes:
    """``frame`` as one netstring."""
    return b"%d:%s," % (len(frame), frame)


class NetstringDecoder:
    """Parses netstrings of at most ``max_length`` payload bytes from bytes fed in any chunking."""

    def __init__(self, max_length: int) -> None:
        if max_length < 0:
            raise ValueError("max_length must be at least 0")
        self.max_length = max_length
        #: The most bytes of an incomplete netstring this decoder ever holds.
        self.max_buffered = len(str(max_length)) + 1 + max_length
        self._max_digits = len(str(max_length))
        self._ready: deque[Frame] = deque()
        self._digits = bytearray()
        # The payload length once its ``:`` has been read; the payload (and comma) so far.
        self._expected: int | None = None
        self._payload = bytearray()
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held of the netstring not complete yet (frames ready to deliver not counted)."""
        if self._expected is None:
            return len(self._digits)
        return len(self._digits) + 1 + len(self._payload)

    @property
    def failed(self) -> FramingError | None:
        """The framing error found, if any (it is delivered after the frames before it)."""
        return self._error

    def receive_data(self, data: bytes) -> None:
        """Take the next bytes from the peer. Never raises on their content."""
        position, end = 0, len(data)
        while position < end and self._error is None:
            if self._expected is None:
                position = self._read_length(data, position)
            else:
                position = self._read_payload(data, position)
        if self._error is not None:  # finished: hold nothing more
            self._digits.clear()
            self._payload.clear()
            self._expected = None

    def next_event(self) -> NetstringEvent:
        """The next complete frame, else the framing error if there was one, else NEED_DATA."""
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            return self._error
        return NEED_DATA

    def _read_length(self, data: bytes, position: int) -> int:
        if not self._digits:
            # The whole length prefix in this chunk and valid: take it at once. The byte-by-byte
            # path below reaches the same state for it (every prefix of a number within the
            # bound is within it too), and alone decides anything else, at the byte at fault.
            colon = data.find(b":", position, position + self._max_digits + 1)
            if colon > position:
                digits = data[position:colon]
                if digits.isdigit() and (digits[0] != _ZERO or colon == position + 1):
                    length = int(digits)
                    if length <= self.max_length:
                        self._digits += digits
                        self._expected = length
                        return colon + 1
        byte = data[position]
        if byte == _COLON:
            if not self._digits:
                self._error = MalformedFrame("no length before ':'")
            else:
                self._expected = int(self._digits)
            return position + 1
        if not _ZERO <= byte <= _NINE:
            self._error = MalformedFrame(f"byte 0x{byte:02x} where the length's digits or ':' should be")
        elif self._digits == b"0":
            self._error = MalformedFrame("a length with a leading zero")
        else:
            self._digits.append(byte)
            # Without a leading zero, more digits only make the number larger: refuse now.
            if int(self._digits) > self.max_length:
                self._error = FrameTooLong(self.max_length, self._digits.decode("ascii"))
        return position + 1

    def _read_payload(self, data: bytes, position: int) -> int:
        assert self._expected is not None
        end = position + self._expected
        if not self._payload and end < len(data) and data[end] == _COMMA:
            # The whole payload and its comma in this chunk: no copy into the buffer first.
            self._ready.append(Frame(bytes(data[position:end])))
            self._digits.clear()
            self._expected = None
            return end + 1
        wanted = self._expected + 1 - len(self._payload)  # the rest of the payload and its comma
        chunk = data[position : position + wanted]
        self._payload += chunk
        if len(self._payload) == self._expected + 1:
            if self._payload[-1] != _COMMA:
                self._error = MalformedFrame(f"byte 0x{self._payload[-1]:02x} where the ',' after {self._expected} bytes should be")
            else:
                self._ready.append(Frame(bytes(self._payload[:-1])))
                self._digits.clear()
                self._payload.clear()
                self._expected = None
        return position + len(chunk)
