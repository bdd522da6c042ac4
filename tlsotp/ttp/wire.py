"""The TTP's wire messages, encoded with ``tlsotp.codec`` and framed as netstrings.

One request and one reply per connection. Every message is ``u8 type`` then its fields;
variable fields carry explicit length prefixes with tight bounds, and a message must be
consumed exactly (trailing bytes are a decode error). Sans-I/O: plain bytes in and out.

Requests (requester to TTP)::

    enroll_request: bytes8 token_id, u8 role, text16 name, bytes8 nonce(32),
                    bytes16 csr_der, bytes8 proof(32)
    renew_request:  bytes16 cert_der, bytes16 csr_der, bytes8 nonce(32), u64 timestamp,
                    bytes16 signature
    crl_request:    (no fields)

Replies (TTP to requester)::

    issued:  bytes16 root_der, bytes16 cert_der
    crl:     bytes16 root_der, bytes24 crl_der
    refused: u8 refusal code, text16 detail
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader, Writer
from tlsotp.pki.csr import MAX_CSR_BYTES
from tlsotp.pki.names import MAX_NAME_LENGTH
from tlsotp.pki.roles import Role

NONCE_BYTES = 32
PROOF_BYTES = 32  # HMAC-SHA256
MAX_TOKEN_ID_BYTES = 64
MAX_CERT_BYTES = 8192
MAX_SIGNATURE_BYTES = 1024  # RSA-8192, the largest key the policy accepts
MAX_CRL_BYTES = 1 << 20  # about 25,000 revocations
MAX_DETAIL_BYTES = 1024


class MessageType(enum.IntEnum):
    enroll_request = 0x01
    renew_request = 0x02
    crl_request = 0x03
    issued = 0x81
    crl = 0x82
    refused = 0xFF


class Refusal(enum.IntEnum):
    """Why the TTP refused a request; sent in a ``refused`` reply, then the TTP closes."""

    decode_error = 1
    too_long = 2
    unknown_message = 3
    bad_csr = 4
    bad_signature = 5
    weak_key = 6
    unknown_token = 7
    token_spent = 8
    token_expired = 9
    bad_token_proof = 10
    name_mismatch = 11
    role_mismatch = 12
    not_renewable = 13
    bad_timestamp = 14
    timeout = 15
    token_withdrawn = 16
    internal_error = 255


class RequestRefused(Exception):
    """Raised by the TTP's decoding and decisions; becomes a ``refused`` reply."""

    def __init__(self, code: Refusal, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.code.name}: {self.detail}"


_ROLE_CODES = {Role.SERVER: 1, Role.CLIENT: 2}
_ROLES_BY_CODE = {code: role for role, code in _ROLE_CODES.items()}


@dataclass(frozen=True)
class EnrollRequest:
    token_id: str
    role: Role
    name: str
    nonce: bytes
    csr_der: bytes
    proof: bytes


@dataclass(frozen=True)
class RenewRequest:
    cert_der: bytes
    csr_der: bytes
    nonce: bytes
    timestamp: int
    signature: bytes


@dataclass(frozen=True)
class CRLRequest:
    pass


@dataclass(frozen=True)
class Issued:
    root_der: bytes
    cert_der: bytes


@dataclass(frozen=True)
class CRLReply:
    root_der: bytes
    crl_der: bytes


@dataclass(frozen=True)
class Refused:
    code: Refusal
    detail: str


Request = Union[EnrollRequest, RenewRequest, CRLRequest]
Reply = Union[Issued, CRLReply, Refused]
Message = Union[Request, Reply]

# The largest encodings, field by field: the netstring bounds on each side of the connection.
MAX_ENROLL_REQUEST = 1 + (1 + MAX_TOKEN_ID_BYTES) + 1 + (2 + MAX_NAME_LENGTH) + (1 + NONCE_BYTES) + (
    2 + MAX_CSR_BYTES
) + (1 + PROOF_BYTES)
MAX_RENEW_REQUEST = 1 + (2 + MAX_CERT_BYTES) + (2 + MAX_CSR_BYTES) + (1 + NONCE_BYTES) + 8 + (
    2 + MAX_SIGNATURE_BYTES
)
MAX_REQUEST_LENGTH = max(MAX_ENROLL_REQUEST, MAX_RENEW_REQUEST)
MAX_REPLY_LENGTH = max(
    1 + (2 + MAX_CERT_BYTES) * 2,
    1 + (2 + MAX_CERT_BYTES) + (3 + MAX_CRL_BYTES),
    1 + 1 + (2 + MAX_DETAIL_BYTES),
)


def encode(message: Message) -> bytes:
    w = Writer()
    if isinstance(message, EnrollRequest):
        w.u8(MessageType.enroll_request).bytes8(message.token_id.encode("ascii"))
        w.u8(_ROLE_CODES[message.role]).text16(message.name)
        w.bytes8(message.nonce).bytes16(message.csr_der).bytes8(message.proof)
    elif isinstance(message, RenewRequest):
        w.u8(MessageType.renew_request).bytes16(message.cert_der).bytes16(message.csr_der)
        w.bytes8(message.nonce).u64(message.timestamp).bytes16(message.signature)
    elif isinstance(message, CRLRequest):
        w.u8(MessageType.crl_request)
    elif isinstance(message, Issued):
        w.u8(MessageType.issued).bytes16(message.root_der).bytes16(message.cert_der)
    elif isinstance(message, CRLReply):
        w.u8(MessageType.crl).bytes16(message.root_der).bytes24(message.crl_der)
    else:
        detail = message.detail.encode("utf-8")[:MAX_DETAIL_BYTES].decode("utf-8", "ignore")
        w.u8(MessageType.refused).u8(message.code).text16(detail)
    return w.getvalue()


def decode_request(payload: bytes) -> Request:
    """Decode what a requester sent; anything else is ``RequestRefused``."""
    try:
        r = Reader(payload)
        kind = r.u8()
        request: Request
        if kind == MessageType.enroll_request:
            token_id = _ascii(r.bytes8(min_len=1, max_len=MAX_TOKEN_ID_BYTES))
            role = _role(r.u8())
            name = r.text16(max_len=MAX_NAME_LENGTH)
            nonce = r.bytes8(min_len=NONCE_BYTES, max_len=NONCE_BYTES)
            csr_der = r.bytes16(min_len=1, max_len=MAX_CSR_BYTES)
            proof = r.bytes8(min_len=PROOF_BYTES, max_len=PROOF_BYTES)
            request = EnrollRequest(token_id, role, name, nonce, csr_der, proof)
        elif kind == MessageType.renew_request:
            cert_der = r.bytes16(min_len=1, max_len=MAX_CERT_BYTES)
            csr_der = r.bytes16(min_len=1, max_len=MAX_CSR_BYTES)
            nonce = r.bytes8(min_len=NONCE_BYTES, max_len=NONCE_BYTES)
            timestamp = r.u64()
            signature = r.bytes16(min_len=1, max_len=MAX_SIGNATURE_BYTES)
            request = RenewRequest(cert_der, csr_der, nonce, timestamp, signature)
        elif kind == MessageType.crl_request:
            request = CRLRequest()
        else:
            raise RequestRefused(Refusal.unknown_message, f"unknown request type 0x{kind:02x}")
        r.done()
    except AlertError as exc:
        raise RequestRefused(Refusal.decode_error, exc.detail) from None
    return request


def decode_reply(payload: bytes) -> Reply:
    """Decode what the TTP sent; malformation is ``AlertError(decode_error)``."""
    r = Reader(payload)
    kind = r.u8()
    reply: Reply
    if kind == MessageType.issued:
        reply = Issued(r.bytes16(min_len=1, max_len=MAX_CERT_BYTES), r.bytes16(min_len=1, max_len=MAX_CERT_BYTES))
    elif kind == MessageType.crl:
        reply = CRLReply(r.bytes16(min_len=1, max_len=MAX_CERT_BYTES), r.bytes24(min_len=1, max_len=MAX_CRL_BYTES))
    elif kind == MessageType.refused:
        code = r.u8()
        detail = r.text16(max_len=MAX_DETAIL_BYTES)
        try:
            reply = Refused(Refusal(code), detail)
        except ValueError:
            reply = Refused(Refusal.internal_error, f"unknown refusal code {code}: {detail}")
    else:
        raise AlertError(Alert.unexpected_message, f"unknown reply type 0x{kind:02x} from the TTP")
    r.done()
    return reply


def _ascii(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise RequestRefused(Refusal.decode_error, "token id is not ASCII") from None


def _role(code: int) -> Role:
    try:
        return _ROLES_BY_CODE[code]
    except KeyError:
        raise RequestRefused(Refusal.decode_error, f"unknown role code {code}") from None
