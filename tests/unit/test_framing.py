"""The sans-I/O netstring decoder (``tlsotp.framing``): round trips in every chunking, nothing
but a typed framing error on any input, the bound on what it buffers, and the rules
(docs/protocol.rst, "Layers and framing"), checked against a reference parser of its own; and
that each shell's refusal no longer depends on how the peer's bytes were chunked."""

from __future__ import annotations

import re
from typing import Optional

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tlsotp.alerts import Alert
from tlsotp.framing import (
    NEED_DATA,
    Frame,
    FrameTooLong,
    FramingError,
    MalformedFrame,
    NetstringDecoder,
    encode,
    netstring_size,
)
from tlsotp.handshake import MAX_FRAME
from tlsotp.services.channel import refusal_for_framing_error
from tlsotp.services.ttp_server import EnrollmentServerFactory
from tlsotp.ttp import wire
from tlsotp.ttp.issuer import Outcome, refused
from tlsotp.ttp.wire import Refusal


def drain(decoder: NetstringDecoder) -> tuple[list[bytes], Optional[FramingError]]:
    frames: list[bytes] = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            return frames, None
        if isinstance(event, FramingError):
            return frames, event
        assert isinstance(event, Frame), event
        frames.append(event.payload)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def feed(decoder: NetstringDecoder, chunks: list[bytes]) -> tuple[list[bytes], Optional[FramingError]]:
    """Feed the chunks, draining after each as a shell does; check the bound all the way."""
    frames: list[bytes] = []
    error: Optional[FramingError] = None
    for chunk in chunks:
        decoder.receive_data(chunk)
        assert decoder.buffered <= decoder.max_buffered, (decoder.buffered, decoder.max_buffered)
        got, error = drain(decoder)
        frames += got
        if error is not None:
            break
    return frames, error


def reference(data: bytes, max_length: int) -> tuple[list[bytes], Optional[str]]:
    """A second reading of the rules, written from docs/protocol.rst without the decoder's
    byte-at-a-time state: the frames, and "too_long" / "malformed" / None."""
    frames: list[bytes] = []
    position = 0
    while position < len(data):
        digits = re.compile(rb"[0-9]*").match(data, position).group()  # type: ignore[union-attr]
        if len(digits) > 1 and digits[:1] == b"0":
            return frames, "malformed"
        if digits and int(digits) > max_length:
            return frames, "too_long"
        after = position + len(digits)
        if after == len(data):
            return frames, None
        if data[after : after + 1] != b":" or not digits:
            return frames, "malformed"
        start = after + 1
        end = start + int(digits)
        if end >= len(data):
            return frames, None
        if data[end : end + 1] != b",":
            return frames, "malformed"
        frames.append(data[start:end])
        position = end + 1
    return frames, None


def kind(error: Optional[FramingError]) -> Optional[str]:
    if error is None:
        return None
    return "too_long" if isinstance(error, FrameTooLong) else "malformed"


max_lengths = st.integers(min_value=0, max_value=300)
#: Bytes that look like netstrings often enough to get past the length.
netstringish = st.lists(
    st.one_of(
        st.binary(max_size=40).map(encode),
        st.binary(max_size=8),
        st.sampled_from([b":", b",", b"0", b"00", b"9", b"3:abc,", b"0:,", b"12:", b"999999"]),
        st.integers(min_value=0, max_value=400).map(lambda n: b"%d:" % n),
    ),
    max_size=12,
).map(b"".join)


class RoundTripTests(unittest.SynchronousTestCase):
    @given(
        max_lengths.flatmap(lambda m: st.tuples(st.just(m), st.lists(st.binary(max_size=m), max_size=8))),
        st.lists(st.integers(min_value=0)),
    )
    def test_frames_survive_any_chunking(self, case: tuple[int, list[bytes]], cuts: list[int]) -> None:
        max_length, frames = case
        data = b"".join(encode(frame) for frame in frames)
        self.assertEqual(len(data), sum(netstring_size(len(frame)) for frame in frames))
        self.assertEqual(feed(NetstringDecoder(max_length), chunked(data, cuts)), (frames, None))

    @given(st.lists(st.binary(max_size=40), max_size=6))
    def test_one_byte_chunks(self, frames: list[bytes]) -> None:
        data = b"".join(encode(frame) for frame in frames)
        decoder = NetstringDecoder(40)
        self.assertEqual(feed(decoder, [data[i : i + 1] for i in range(len(data))]), (frames, None))
        self.assertEqual(decoder.buffered, 0)

    def test_encode(self) -> None:
        self.assertEqual(encode(b""), b"0:,")
        self.assertEqual(encode(b"abc"), b"3:abc,")
        self.assertEqual(encode(b"\x00" * 10), b"10:" + b"\x00" * 10 + b",")

    def test_a_frame_of_exactly_the_bound_is_accepted(self) -> None:
        decoder = NetstringDecoder(MAX_FRAME)
        decoder.receive_data(encode(b"\x16" * MAX_FRAME))
        self.assertEqual(drain(decoder), ([b"\x16" * MAX_FRAME], None))


class AnyInputTests(unittest.SynchronousTestCase):
    @given(max_lengths, st.one_of(st.binary(max_size=200), netstringish), st.lists(st.integers(min_value=0)))
    def test_any_bytes_give_frames_then_at_most_one_typed_error(self, max_length: int, data: bytes, cuts: list[int]) -> None:
        decoder = NetstringDecoder(max_length)
        frames, error = feed(decoder, chunked(data, cuts))
        # The same reading as the reference, whatever the chunking.
        self.assertEqual((frames, kind(error)), reference(data, max_length))
        if error is not None:
            self.assertIsInstance(error.detail, str)
            # Sticky: the error again, more data dropped, nothing held.
            decoder.receive_data(b"1:x,")
            self.assertIs(decoder.next_event(), error)
            self.assertEqual(decoder.buffered, 0)

    @given(max_lengths, st.one_of(st.binary(max_size=200), netstringish), st.lists(st.integers(min_value=0)))
    def test_any_chunking_gives_exactly_what_one_byte_at_a_time_gives(self, max_length: int, data: bytes, cuts: list[int]) -> None:
        # Whole length prefixes and payloads in one chunk take a fast path; the byte-at-a-time
        # reading is the rule. Same frames, same error (its kind, text and proving digits), and
        # the same bytes held after each chunk as after the same bytes fed one at a time.
        fast, slow = NetstringDecoder(max_length), NetstringDecoder(max_length)
        fed = 0
        for chunk in chunked(data, cuts):
            fast.receive_data(chunk)
            for i in range(len(chunk)):
                slow.receive_data(chunk[i : i + 1])
            fed += len(chunk)
            self.assertEqual(fast.buffered, slow.buffered, fed)
            self.assertEqual(drain(fast), drain(slow))
        self.assertEqual(fast.failed, slow.failed)

    @given(st.binary(max_size=400), st.lists(st.integers(min_value=0)))
    def test_the_buffer_never_exceeds_its_bound(self, data: bytes, cuts: list[int]) -> None:
        decoder = NetstringDecoder(20)
        self.assertEqual(decoder.max_buffered, 2 + 1 + 20)
        for chunk in chunked(b"20:" + data, cuts):
            decoder.receive_data(chunk)
            self.assertLessEqual(decoder.buffered, decoder.max_buffered)
            drain(decoder)


class RuleTests(unittest.SynchronousTestCase):
    def error_for(self, data: bytes, max_length: int = MAX_FRAME) -> Optional[FramingError]:
        decoder = NetstringDecoder(max_length)
        decoder.receive_data(data)
        return drain(decoder)[1]

    @given(max_lengths, st.integers(min_value=1, max_value=10**30))
    def test_an_over_long_length_is_refused_at_the_digit_that_proves_it(self, max_length: int, excess: int) -> None:
        digits = str(max_length + excess).encode()
        decoder = NetstringDecoder(max_length)
        for i in range(len(digits)):
            decoder.receive_data(digits[i : i + 1])
            if int(digits[: i + 1]) > max_length:
                break
            self.assertIs(decoder.next_event(), NEED_DATA)
        error = decoder.next_event()
        assert isinstance(error, FrameTooLong), error
        self.assertEqual((error.limit, error.digits), (max_length, digits[: i + 1].decode()))
        # No colon yet, no payload: nothing of the body was (or will be) buffered.
        decoder.receive_data(b":" + b"x" * 1000)
        self.assertEqual(decoder.buffered, 0)
        self.assertIs(decoder.next_event(), error)

    def test_the_largest_length_waits_for_its_payload(self) -> None:
        decoder = NetstringDecoder(MAX_FRAME)
        decoder.receive_data(b"%d:" % MAX_FRAME)
        self.assertIs(decoder.next_event(), NEED_DATA)
        self.assertIsInstance(self.error_for(b"%d" % (MAX_FRAME + 1)), FrameTooLong)
        self.assertIsInstance(self.error_for(b"99999"), FrameTooLong)
        self.assertIsNone(self.error_for(b"9999"))

    def test_leading_zeros_are_malformed(self) -> None:
        for data in (b"00:", b"01:x,", b"00", b"0999999999:", b"3:abc,007:abcdefg,"):
            self.assertIsInstance(self.error_for(data), MalformedFrame, data)
        decoder = NetstringDecoder(MAX_FRAME)
        decoder.receive_data(b"0:,0:,")
        self.assertEqual(drain(decoder), ([b"", b""], None))

    def test_a_missing_comma_is_malformed(self) -> None:
        for data in (b"3:abcX", b"3:abcd99999999:", b"0:X", b"1:ab,"):
            self.assertIsInstance(self.error_for(data), MalformedFrame, data)

    def test_other_malformations(self) -> None:
        for data in (b":", b"-1:", b"abc:", b" 1:a,", b"1 :a,", b"+1:a,", b"12\n:", "١:a,".encode()):
            self.assertIsInstance(self.error_for(data), MalformedFrame, data)

    def test_frames_before_the_error_come_first(self) -> None:
        decoder = NetstringDecoder(10)
        decoder.receive_data(b"1:a,2:bc,99")
        self.assertEqual(drain(decoder), ([b"a", b"bc"], FrameTooLong(10, "99")))

    def test_the_channel_maps_the_kinds_to_its_alerts(self) -> None:
        self.assertEqual(refusal_for_framing_error(FrameTooLong(MAX_FRAME, "99999"))[0], Alert.record_overflow)
        self.assertEqual(refusal_for_framing_error(MalformedFrame("x"))[0], Alert.decode_error)


class TTPRefusalChunkingTests(unittest.SynchronousTestCase):
    """The TTP's old shell classified a framing error by re-reading Twisted's private buffer, so
    the same bytes got ``too_long`` in one chunk and ``decode_error`` byte by byte (a leading
    zero before many digits; a missing comma followed by a long number). Now the decoder says."""

    def refusal(self, chunks: list[bytes]) -> Refusal:
        def handle(payload: bytes) -> Deferred[Outcome]:
            return succeed(refused(Refusal.unknown_message, "not reached"))

        factory = EnrollmentServerFactory(handle, timeout=30, call_later=Clock().callLater)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.assertTrue(transport.disconnecting)
        decoder = NetstringDecoder(wire.MAX_REPLY_LENGTH)
        decoder.receive_data(transport.value())
        (frame,), error = drain(decoder)
        self.assertIsNone(error)
        reply = wire.decode_reply(frame)
        assert isinstance(reply, wire.Refused), reply
        return reply.code

    def test_the_refusal_does_not_depend_on_the_chunking(self) -> None:
        long_number = str(wire.MAX_REQUEST_LENGTH * 10).encode()
        for data in (b"0" + long_number + b":", b"5:hello!" + long_number + b":"):
            self.assertEqual(self.refusal([data]), Refusal.decode_error, data)
            self.assertEqual(self.refusal([data[i : i + 1] for i in range(len(data))]), Refusal.decode_error, data)
        over = str(wire.MAX_REQUEST_LENGTH + 1).encode() + b":"
        self.assertEqual(self.refusal([over]), Refusal.too_long)
        self.assertEqual(self.refusal([over[i : i + 1] for i in range(len(over))]), Refusal.too_long)
