"""The application protocol carried in protected records once the handshake is done.

One request per secure session: the client asks for an OTP for a transaction, or confirms one;
the server answers once and closes. Encoded with tlsotp's bounded codec; docs/protocol.rst
("The application: one-time passwords") is the byte-exact specification, and this module
implements exactly its rules: a malformed message is a ``decode_error`` alert, an unknown
message type ``unexpected_message``. ``encode`` applies the same rules, so nothing this side
sends could be refused by a conforming peer.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Union

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader, Writer

#: Bounds in Unicode code points (not bytes); UTF-8 takes at most 4 bytes per code point.
MAX_TRANSACTION_CHARS = 200
MAX_MESSAGE_CHARS = 400
MIN_CODE_DIGITS = 4
MAX_CODE_DIGITS = 12
TRANSACTION_ID_BYTES = 16
MAX_U64 = 2**64 - 1

_CODE = re.compile(r"[0-9]{%d,%d}" % (MIN_CODE_DIGITS, MAX_CODE_DIGITS))


class MessageType(enum.IntEnum):
    otp_request = 1
    otp_grant = 2
    confirm_request = 3
    confirm_result = 4


class ConfirmStatus(enum.IntEnum):
    accepted = 0
    wrong_code = 1
    expired = 2
    already_used = 3
    locked = 4
    unknown_transaction = 5


@dataclass(frozen=True)
class OTPRequest:
    transaction: str


@dataclass(frozen=True)
class OTPGrant:
    transaction_id: bytes
    transaction: str
    code: str
    expires_at: int  # Unix seconds, UTC
    message: str


@dataclass(frozen=True)
class ConfirmRequest:
    transaction: str
    code: str


@dataclass(frozen=True)
class ConfirmResult:
    status: ConfirmStatus
    attempts_left: int


AppMessage = Union[OTPRequest, OTPGrant, ConfirmRequest, ConfirmResult]


def check_text(text: str, max_chars: int, what: str) -> str:
    """1 to ``max_chars`` code points, each printable: the one character rule is no general
    category C* (controls, format characters, surrogates, private use, unassigned) and no Z*
    (separators) except U+0020 SPACE.

    ``str.isprintable`` is that same rule (CPython's printable flag is every category but C* and
    Z*, plus U+0020, from the same Unicode database as ``unicodedata``; a test compares the two
    over every code point), run in C rather than one Python call per character."""
    if not 1 <= len(text) <= max_chars or not text.isprintable():
        raise ValueError(
            f"{what} is 1 to {max_chars} printable characters on one line"
            " (no control, format, separator other than space, private-use or unassigned characters)"
        )
    return text


def check_transaction(text: str) -> str:
    """A transaction description: 1 to 200 printable code points, in Unicode normal form NFC."""
    check_text(text, MAX_TRANSACTION_CHARS, "a transaction")
    if not unicodedata.is_normalized("NFC", text):
        raise ValueError("a transaction must be in Unicode normal form NFC")
    return text


def check_code(code: str) -> str:
    if not _CODE.fullmatch(code):
        raise ValueError(f"an OTP is {MIN_CODE_DIGITS} to {MAX_CODE_DIGITS} ASCII digits (0-9)")
    return code


def check_attempts_left(status: ConfirmStatus, attempts_left: int) -> int:
    """``attempts_left`` is at least 1 with ``wrong_code`` (the wrong confirmations the transaction
    still tolerates before it locks) and 0 with every other status."""
    if status is ConfirmStatus.wrong_code:
        if not 1 <= attempts_left <= 0xFF:
            raise ValueError("attempts_left is 1 to 255 with wrong_code")
    elif attempts_left != 0:
        raise ValueError(f"attempts_left is 0 with {status.name}")
    return attempts_left


def check(message: AppMessage) -> AppMessage:
    """Every field rule of docs/protocol.rst; ``ValueError`` names the first one broken."""
    if isinstance(message, OTPRequest):
        check_transaction(message.transaction)
    elif isinstance(message, OTPGrant):
        if len(message.transaction_id) != TRANSACTION_ID_BYTES:
            raise ValueError(f"a transaction id is {TRANSACTION_ID_BYTES} bytes")
        check_transaction(message.transaction)
        check_code(message.code)
        if not 0 <= message.expires_at <= MAX_U64:
            raise ValueError("expires_at is a u64")
        check_text(message.message, MAX_MESSAGE_CHARS, "an OTP message")
    elif isinstance(message, ConfirmRequest):
        check_transaction(message.transaction)
        check_code(message.code)
    else:
        check_attempts_left(ConfirmStatus(message.status), message.attempts_left)
    return message


def encode(message: AppMessage) -> bytes:
    """The record payload for ``message``; ``ValueError`` if it breaks a field rule."""
    check(message)
    w = Writer()
    if isinstance(message, OTPRequest):
        w.u8(MessageType.otp_request).text16(message.transaction)
    elif isinstance(message, OTPGrant):
        w.u8(MessageType.otp_grant).bytes8(message.transaction_id).text16(message.transaction)
        w.text16(message.code).u64(message.expires_at).text16(message.message)
    elif isinstance(message, ConfirmRequest):
        w.u8(MessageType.confirm_request).text16(message.transaction).text16(message.code)
    else:
        w.u8(MessageType.confirm_result).u8(message.status).u8(message.attempts_left)
    return w.getvalue()


def decode(data: bytes) -> AppMessage:
    """One message from one record's plaintext: ``decode_error`` for anything malformed (empty,
    truncated, trailing bytes, a field out of bounds), ``unexpected_message`` for an unknown type."""
    r = Reader(data)
    kind = r.u8()
    message: AppMessage
    transaction_bytes = 4 * MAX_TRANSACTION_CHARS
    try:
        if kind == MessageType.otp_request:
            message = OTPRequest(r.text16(max_len=transaction_bytes))
        elif kind == MessageType.otp_grant:
            message = OTPGrant(
                transaction_id=r.bytes8(min_len=TRANSACTION_ID_BYTES, max_len=TRANSACTION_ID_BYTES),
                transaction=r.text16(max_len=transaction_bytes),
                code=r.text16(max_len=MAX_CODE_DIGITS),
                expires_at=r.u64(),
                message=r.text16(max_len=4 * MAX_MESSAGE_CHARS),
            )
        elif kind == MessageType.confirm_request:
            message = ConfirmRequest(r.text16(max_len=transaction_bytes), r.text16(max_len=MAX_CODE_DIGITS))
        elif kind == MessageType.confirm_result:
            status = r.u8()
            if status not in ConfirmStatus.__members__.values():
                raise ValueError(f"unknown confirmation status {status}")
            message = ConfirmResult(ConfirmStatus(status), r.u8())
        else:
            raise AlertError(Alert.unexpected_message, f"unknown application message type {kind}")
        r.done()
        check(message)
    except ValueError as exc:
        raise AlertError(Alert.decode_error, str(exc)) from None
    return message


def otp_message(transaction: str, code: str) -> str:
    """The sentence the client shows its user."""
    return f"The OTP for transferring {transaction} is {code}."
