"""The OTP application messages against docs/protocol.rst, by generation.

Round trips for every valid message, and the exact field bounds: which transactions and codes
are accepted is decided here by an oracle written from the spec's words (Unicode general
categories, read with ``unicodedata``; the code checks with ``str.isprintable``, so the two
formulations cross-check, and one test compares them on every code point), and
every byte string a peer could send either decodes to a message that re-encodes to exactly
those bytes (the encoding is canonical) or is refused with the documented alert.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.vectors.harness import Pair, make_configs
from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Writer
from tlsotp.handshake import ApplicationData, ClientConnection, ServerConnection, suite_named
from tlsotp.handshake.frames import ContentType, encode_frame
from tlsotp.otp import messages
from tlsotp.otp.messages import ConfirmStatus, MessageType


def spec_transaction_ok(text: str) -> bool:
    """docs/protocol.rst: 1 to 200 code points, no C*/Z* except U+0020, NFC."""
    return 1 <= len(text) <= 200 and all(spec_char_ok(c) for c in text) and unicodedata.normalize("NFC", text) == text


def spec_char_ok(char: str) -> bool:
    """docs/protocol.rst: no general category C* (controls, format, surrogates, private use,
    unassigned) and no Z* (separators) except U+0020 SPACE."""
    return char == " " or unicodedata.category(char)[0] not in "CZ"


def spec_code_ok(code: str) -> bool:
    return 4 <= len(code) <= 12 and all("0" <= c <= "9" for c in code)


printable = st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")) | st.just(" ")
transactions = (
    st.text(printable, min_size=1, max_size=200)
    .map(lambda t: unicodedata.normalize("NFC", t))
    .filter(lambda t: 1 <= len(t) <= 200)
)
codes = st.from_regex(r"[0-9]{4,12}", fullmatch=True)
any_text = st.text(st.characters(codec="utf-8"), max_size=210)
statuses = st.sampled_from(list(ConfirmStatus))


@st.composite
def results(draw: st.DrawFn) -> messages.ConfirmResult:
    status = draw(statuses)
    left = draw(st.integers(1, 255)) if status is ConfirmStatus.wrong_code else 0
    return messages.ConfirmResult(status, left)


@st.composite
def grants(draw: st.DrawFn) -> messages.OTPGrant:
    transaction, code = draw(transactions), draw(codes)
    return messages.OTPGrant(
        transaction_id=draw(st.binary(min_size=16, max_size=16)),
        transaction=transaction,
        code=code,
        expires_at=draw(st.integers(0, 2**64 - 1)),
        message=messages.otp_message(transaction, code) if len(transaction) <= 200 else "x",
    )


valid_messages = (
    transactions.map(messages.OTPRequest)
    | grants()
    | st.builds(messages.ConfirmRequest, transactions, codes)
    | results()
)


def raw_request(transaction: str) -> bytes:
    return Writer().u8(MessageType.otp_request).text16(transaction).getvalue()


def raw_confirm(transaction: str, code: str) -> bytes:
    return Writer().u8(MessageType.confirm_request).text16(transaction).text16(code).getvalue()


def refusal(data: bytes) -> Alert | None:
    try:
        messages.decode(data)
    except AlertError as exc:
        return exc.alert
    return None


class RoundTripTests(unittest.SynchronousTestCase):
    @given(valid_messages)
    def test_every_valid_message_round_trips(self, message: messages.AppMessage) -> None:
        self.assertEqual(messages.decode(messages.encode(message)), message)

    @given(valid_messages)
    def test_layout_is_the_documented_one(self, message: messages.AppMessage) -> None:
        """The first byte is the type, as a u8; every text16 is a u16 byte length and UTF-8."""
        data = messages.encode(message)
        self.assertEqual(data[0], {
            messages.OTPRequest: 1, messages.OTPGrant: 2, messages.ConfirmRequest: 3, messages.ConfirmResult: 4,
        }[type(message)])
        if isinstance(message, messages.OTPRequest):
            body = message.transaction.encode("utf-8")
            self.assertEqual(data, b"\x01" + len(body).to_bytes(2, "big") + body)
        elif isinstance(message, messages.ConfirmResult):
            self.assertEqual(data, bytes([4, message.status, message.attempts_left]))
        elif isinstance(message, messages.OTPGrant):
            self.assertEqual(data[1:18], b"\x10" + message.transaction_id)
            self.assertEqual(data[-(2 + len(message.message.encode())) - 8 : -(2 + len(message.message.encode()))],
                             message.expires_at.to_bytes(8, "big"))

    @given(st.binary(max_size=64) | valid_messages.map(messages.encode).flatmap(
        lambda good: st.tuples(st.just(good), st.integers(0, len(good) - 1), st.integers(0, 255)).map(
            lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
        )
    ))
    def test_any_bytes_decode_canonically_or_are_refused_as_documented(self, data: bytes) -> None:
        try:
            message = messages.decode(data)
        except AlertError as exc:
            expected = Alert.unexpected_message if data and data[0] not in (1, 2, 3, 4) else Alert.decode_error
            self.assertEqual(exc.alert, expected)
            return
        self.assertEqual(messages.encode(message), data)


class BoundsTests(unittest.SynchronousTestCase):
    @given(any_text)
    @example("")
    @example("e\u0301")  # not NFC
    @example("\u200b")  # Cf
    @example("a\u00a0b")  # Zs other than space
    @example("\U000f0000")  # private use
    @example("€" * 200)  # 200 code points, 600 bytes: allowed
    @example("€" * 201)
    @example("x" * 200)
    @example("x" * 201)
    @example("bank\n")
    def test_transaction_accepted_exactly_as_specified(self, text: str) -> None:
        ok = spec_transaction_ok(text)
        self.assertEqual(refusal(raw_request(text)) is None, ok, repr(text))
        self.assertEqual(refusal(raw_confirm(text, "123456")) is None, ok, repr(text))
        if ok:
            self.assertEqual(messages.check_transaction(text), text)
        else:
            self.assertEqual(refusal(raw_request(text)), Alert.decode_error)
            self.assertRaises(ValueError, messages.check_transaction, text)
            self.assertRaises(ValueError, messages.encode, messages.OTPRequest(text))

    def test_the_character_rule_is_str_isprintable_on_every_code_point(self) -> None:
        """``check_text`` runs ``str.isprintable``; the spec's rule is the categories: the same
        verdict for each of the 1,114,112 code points (surrogates included)."""
        differ = [hex(n) for n in range(0x110000) if spec_char_ok(chr(n)) != chr(n).isprintable()]
        self.assertEqual(differ, [])

    @given(st.text(st.characters(codec="utf-8"), max_size=14) | st.from_regex(r"[0-9]{0,14}", fullmatch=True))
    @example("1")
    @example("12")
    @example("123")
    @example("1234")
    @example("123456789012")
    @example("1234567890123")
    @example("١٢٣٤")  # Arabic-Indic digits: isdigit(), not ASCII
    @example("1234\n")
    def test_code_accepted_exactly_as_specified(self, code: str) -> None:
        ok = spec_code_ok(code)
        self.assertEqual(refusal(raw_confirm("Rs 5 to Bob", code)) is None, ok, repr(code))
        if not ok:
            self.assertEqual(refusal(raw_confirm("Rs 5 to Bob", code)), Alert.decode_error)
            self.assertRaises(ValueError, messages.check_code, code)

    def test_short_codes_are_refused(self) -> None:
        """Today 1 to 3 digit codes were answered; the spec says 4 to 12."""
        for code in ("1", "12", "123"):
            self.assertEqual(refusal(raw_confirm("Rs 5 to Bob", code)), Alert.decode_error)

    @given(statuses, st.integers(0, 255))
    def test_attempts_left_bound_by_status(self, status: ConfirmStatus, left: int) -> None:
        ok = (left >= 1) if status is ConfirmStatus.wrong_code else (left == 0)
        self.assertEqual(refusal(bytes([4, status, left])) is None, ok)

    def test_unknown_type_empty_record_and_split_message(self) -> None:
        whole = messages.encode(messages.OTPRequest("Rs 5 to Bob"))
        self.assertEqual(refusal(b""), Alert.decode_error)
        self.assertEqual(refusal(whole[:5]), Alert.decode_error)  # the first of two records
        self.assertEqual(refusal(whole + whole), Alert.decode_error)  # two messages in one record
        for kind in (0, 5, 255):
            self.assertEqual(refusal(bytes([kind]) + whole[1:]), Alert.unexpected_message)

    def test_grant_field_bounds(self) -> None:
        good = messages.OTPGrant(b"\x01" * 16, "Rs 5", "123456", 10, messages.otp_message("Rs 5", "123456"))
        data = messages.encode(good)
        self.assertEqual(refusal(data), None)
        self.assertEqual(refusal(b"\x02\x0f" + data[2:17] + data[18:]), Alert.decode_error)  # 15-byte id
        self.assertRaises(ValueError, messages.encode, messages.OTPGrant(b"\x01" * 16, "Rs 5", "123", 10, "m"))
        self.assertRaises(ValueError, messages.encode, messages.OTPGrant(b"\x01" * 16, "Rs 5", "1234", 10, "a\nb"))
        self.assertTrue(re.fullmatch(r"The OTP for transferring Rs 5 is 123456\.", good.message))


class EmptyRecordTests(unittest.SynchronousTestCase):
    def test_an_empty_record_carries_no_message_and_is_skipped(self) -> None:
        """The record layer authenticates an empty application_data record, counts its sequence
        number and delivers nothing, so the application never sees (or refuses) it."""
        client_config, server_config = make_configs(suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_128_GCM_SHA256"))
        pair = Pair(ClientConnection(client_config), ServerConnection(server_config))
        pair.client.initiate()
        pair.pump()
        sealer = pair.client._sealer  # a peer that sends an empty record, as TLS 1.3 allows
        assert sealer is not None
        empty = encode_frame(ContentType.application_data, sealer.seal(ContentType.application_data, b""))
        self.assertEqual(len(empty), 1 + 16)
        self.assertEqual(pair.server.receive_frame(empty), [])
        request = messages.encode(messages.OTPRequest("Rs 5 to Bob"))
        pair.client.send_application_data(request)
        pair.pump()
        self.assertEqual(pair.server_events[-1], ApplicationData(request))
        self.assertFalse(pair.server.closed)
