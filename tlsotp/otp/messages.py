"""The application protocol carried in protected records once the handshake is done.

One request per secure session: the client asks for an OTP for a transaction, or confirms one;
the server answers once and closes. Encoded with tlsotp's bounded codec; a malformed message is
a ``decode_error`` alert like any other.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader, Writer

MAX_TRANSACTION_CHARS = 200
MAX_MESSAGE_CHARS = 400
MAX_CODE_DIGITS = 12
TRANSACTION_ID_BYTES = 16


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


def check_transaction(text: str) -> str:
    """A transaction description is one printable line of bounded length."""
    if not text or len(text) > MAX_TRANSACTION_CHARS or not text.isprintable():
        raise ValueError(
            f"a transaction is 1 to {MAX_TRANSACTION_CHARS} printable characters on one line"
        )
    return text


def check_code(code: str) -> str:
    if not (1 <= len(code) <= MAX_CODE_DIGITS) or not code.isascii() or not code.isdigit():
        raise ValueError(f"an OTP is 1 to {MAX_CODE_DIGITS} ASCII digits")
    return code


def encode(message: AppMessage) -> bytes:
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
    r = Reader(data)
    kind = r.u8()
    message: AppMessage
    try:
        if kind == MessageType.otp_request:
            message = OTPRequest(check_transaction(r.text16(max_len=4 * MAX_TRANSACTION_CHARS)))
        elif kind == MessageType.otp_grant:
            message = OTPGrant(
                transaction_id=r.bytes8(min_len=TRANSACTION_ID_BYTES, max_len=TRANSACTION_ID_BYTES),
                transaction=check_transaction(r.text16(max_len=4 * MAX_TRANSACTION_CHARS)),
                code=check_code(r.text16(max_len=MAX_CODE_DIGITS)),
                expires_at=r.u64(),
                message=r.text16(max_len=4 * MAX_MESSAGE_CHARS),
            )
        elif kind == MessageType.confirm_request:
            message = ConfirmRequest(
                transaction=check_transaction(r.text16(max_len=4 * MAX_TRANSACTION_CHARS)),
                code=check_code(r.text16(max_len=MAX_CODE_DIGITS)),
            )
        elif kind == MessageType.confirm_result:
            status = r.u8()
            if status not in ConfirmStatus.__members__.values():
                raise ValueError(f"unknown confirmation status {status}")
            message = ConfirmResult(ConfirmStatus(status), r.u8())
        else:
            raise AlertError(Alert.unexpected_message, f"unknown application message type {kind}")
    except ValueError as exc:
        raise AlertError(Alert.decode_error, str(exc)) from None
    r.done()
    return message


def otp_message(transaction: str, code: str) -> str:
    """The sentence the client shows its user."""
    return f"The OTP for transferring {transaction} is {code}."
