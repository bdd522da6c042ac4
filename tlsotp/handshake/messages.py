"""Handshake messages: their fields, exact encodings, bounded decoders and trace summaries.

Each handshake message travels as ``u8 msg_type || u24 length || body`` (TLS's Handshake
header), one per frame. Those bytes, header included, are what the transcript hashes. Decoders
check every length against ``limits`` and insist on consuming the body exactly, so malformed
input is always ``decode_error`` and never an exception or a half-parsed object.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from cryptography import x509

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Reader, Writer
from tlsotp.handshake.limits import (
    MAX_CERTIFICATE_SIZE,
    MAX_CHAIN,
    MAX_KEY_SHARE_SIZE,
    MAX_KEY_SHARES,
    MAX_KEY_TRANSPORT_SIZE,
    MAX_SIGNATURE_SIZE,
    MAX_SUITES,
    MAX_VERSIONS,
    RANDOM_LENGTH,
)
from tlsotp.handshake.signatures import SignatureScheme
from tlsotp.handshake.suites import Group, suite_for_code


class HandshakeType(enum.IntEnum):
    """TLS's HandshakeType codes; key_transport reuses ClientKeyExchange's 16."""

    client_hello = 1
    server_hello = 2
    certificate = 11
    certificate_verify = 15
    key_transport = 16
    finished = 20


#: The known types by wire code: a dict lookup, where HandshakeType(code) is several Python calls.
_HANDSHAKE_TYPES: dict[int, HandshakeType] = {t.value: t for t in HandshakeType}


def _u16_list(data: bytes, what: str) -> tuple[int, ...]:
    if len(data) % 2:
        raise AlertError(Alert.decode_error, f"{what} list has an odd length")
    return struct.unpack(f">{len(data) // 2}H", data)


def suite_label(code: int) -> str:
    suite = suite_for_code(code)
    return suite.name if suite is not None else f"unknown(0x{code:04x})"


def group_label(code: int) -> str:
    try:
        return Group(code).name
    except ValueError:
        return f"unknown(0x{code:04x})"


def scheme_label(code: int) -> str:
    try:
        return SignatureScheme(code).name
    except ValueError:
        return f"unknown(0x{code:04x})"


@dataclass(frozen=True)
class KeyShare:
    group: int
    key_exchange: bytes


@dataclass(frozen=True)
class ClientHello:
    """Offers, in preference order, and the client's contribution to freshness and ECDHE."""

    TYPE: ClassVar[HandshakeType] = HandshakeType.client_hello

    versions: tuple[int, ...]
    random: bytes
    suites: tuple[int, ...]
    key_shares: tuple[KeyShare, ...]

    def encode_body(self) -> bytes:
        shares = Writer()
        for share in self.key_shares:
            shares.u16(share.group).bytes16(share.key_exchange)
        return (
            Writer()
            .bytes8(b"".join(v.to_bytes(2, "big") for v in self.versions))
            .raw(self.random)
            .bytes16(b"".join(s.to_bytes(2, "big") for s in self.suites))
            .bytes16(shares.getvalue())
            .getvalue()
        )

    @classmethod
    def decode_body(cls, body: bytes) -> ClientHello:
        r = Reader(body)
        versions = _u16_list(r.bytes8(min_len=2, max_len=2 * MAX_VERSIONS), "version")
        random = r.raw(RANDOM_LENGTH)
        suites = _u16_list(r.bytes16(min_len=2, max_len=2 * MAX_SUITES), "cipher suite")
        shares_reader = Reader(r.bytes16(max_len=MAX_KEY_SHARES * (4 + MAX_KEY_SHARE_SIZE)))
        r.done()
        shares: list[KeyShare] = []
        while shares_reader.remaining():
            group = shares_reader.u16()
            shares.append(KeyShare(group, shares_reader.bytes16(min_len=1, max_len=MAX_KEY_SHARE_SIZE)))
        if len(shares) > MAX_KEY_SHARES:
            raise AlertError(Alert.decode_error, f"more than {MAX_KEY_SHARES} key shares")
        return cls(versions, random, suites, tuple(shares))

    def trace_fields(self) -> dict[str, str]:
        return {
            "versions": ",".join(str(v) for v in self.versions),
            "client_random": self.random.hex(),
            "offered_suites": ",".join(suite_label(s) for s in self.suites),
            "key_shares": ",".join(f"{group_label(s.group)}:{len(s.key_exchange)} bytes" for s in self.key_shares),
        }


@dataclass(frozen=True)
class ServerHello:
    """The server's choices; key_share is empty for RSA transport suites."""

    TYPE: ClassVar[HandshakeType] = HandshakeType.server_hello

    version: int
    random: bytes
    suite: int
    key_share: bytes

    def encode_body(self) -> bytes:
        return Writer().u16(self.version).raw(self.random).u16(self.suite).bytes16(self.key_share).getvalue()

    @classmethod
    def decode_body(cls, body: bytes) -> ServerHello:
        r = Reader(body)
        hello = cls(r.u16(), r.raw(RANDOM_LENGTH), r.u16(), r.bytes16(max_len=MAX_KEY_SHARE_SIZE))
        r.done()
        return hello

    def trace_fields(self) -> dict[str, str]:
        return {
            "version": str(self.version),
            "server_random": self.random.hex(),
            "chosen_suite": suite_label(self.suite),
            "key_share_length": str(len(self.key_share)),
        }


@dataclass(frozen=True)
class Certificate:
    """A chain of DER certificates, leaf first; parsing into x509 objects is the receiver's job."""

    TYPE: ClassVar[HandshakeType] = HandshakeType.certificate

    chain: tuple[bytes, ...]

    def encode_body(self) -> bytes:
        entries = Writer()
        for der in self.chain:
            entries.bytes24(der)
        return Writer().bytes24(entries.getvalue()).getvalue()

    @classmethod
    def decode_body(cls, body: bytes) -> Certificate:
        r = Reader(body)
        entries = Reader(r.bytes24(max_len=MAX_CHAIN * (3 + MAX_CERTIFICATE_SIZE)))
        r.done()
        chain: list[bytes] = []
        while entries.remaining():
            if len(chain) == MAX_CHAIN:
                raise AlertError(Alert.decode_error, f"certificate chain longer than {MAX_CHAIN}")
            chain.append(entries.bytes24(min_len=1, max_len=MAX_CERTIFICATE_SIZE))
        return cls(tuple(chain))

    def trace_fields(self) -> dict[str, str]:
        subjects: list[str] = []
        for der in self.chain:
            try:
                subjects.append(x509.load_der_x509_certificate(der).subject.rfc4514_string())
            except Exception:  # noqa: BLE001 - a trace of hostile input (InvalidVersion is no ValueError)
                subjects.append("<unparseable>")
        return {"certificates": str(len(self.chain)), "subjects": " | ".join(subjects)}


@dataclass(frozen=True)
class CertificateVerify:
    TYPE: ClassVar[HandshakeType] = HandshakeType.certificate_verify

    scheme: int
    signature: bytes

    def encode_body(self) -> bytes:
        return Writer().u16(self.scheme).bytes16(self.signature).getvalue()

    @classmethod
    def decode_body(cls, body: bytes) -> CertificateVerify:
        r = Reader(body)
        message = cls(r.u16(), r.bytes16(min_len=1, max_len=MAX_SIGNATURE_SIZE))
        r.done()
        return message

    def trace_fields(self) -> dict[str, str]:
        return {"signature_algorithm": scheme_label(self.scheme), "signature_length": str(len(self.signature))}


@dataclass(frozen=True)
class KeyTransport:
    """RSA transport suites only: the client's secret, RSA-OAEP-encrypted to the server's key."""

    TYPE: ClassVar[HandshakeType] = HandshakeType.key_transport

    encrypted_secret: bytes

    def encode_body(self) -> bytes:
        return Writer().bytes16(self.encrypted_secret).getvalue()

    @classmethod
    def decode_body(cls, body: bytes) -> KeyTransport:
        r = Reader(body)
        message = cls(r.bytes16(min_len=1, max_len=MAX_KEY_TRANSPORT_SIZE))
        r.done()
        return message

    def trace_fields(self) -> dict[str, str]:
        return {"encrypted_secret_length": str(len(self.encrypted_secret))}


@dataclass(frozen=True)
class Finished:
    """The HMAC over the transcript; its length (the suite's hash length) is checked by the
    state machine, which knows the suite."""

    TYPE: ClassVar[HandshakeType] = HandshakeType.finished

    verify_data: bytes

    def encode_body(self) -> bytes:
        return self.verify_data

    @classmethod
    def decode_body(cls, body: bytes) -> Finished:
        return cls(body)

    def trace_fields(self) -> dict[str, str]:
        return {"verify_data": self.verify_data.hex()}


HandshakeMessage: TypeAlias = ClientHello | ServerHello | Certificate | CertificateVerify | KeyTransport | Finished


def encode_handshake(message: HandshakeMessage) -> bytes:
    """The message with its header: the exact bytes the transcript hashes."""
    body = message.encode_body()
    if len(body) > 0xFFFFFF:  # the Writer refuses it, with its message
        return Writer().u8(message.TYPE).bytes24(body).getvalue()
    return ((message.TYPE << 24) | len(body)).to_bytes(4, "big") + body


def split_handshake(data: bytes) -> tuple[HandshakeType, bytes]:
    """Header and body of one handshake message filling the whole frame body."""
    if len(data) >= 4 and ((data[1] << 16) | (data[2] << 8) | data[3]) == len(data) - 4:
        code, body = data[0], bytes(data[4:])  # a well-formed header: what the Reader would read
    else:  # the Reader refuses it, with its exact decode_error
        r = Reader(data)
        code = r.u8()
        body = r.bytes24()
        r.done()
    msg_type = _HANDSHAKE_TYPES.get(code)
    if msg_type is None:
        raise AlertError(Alert.unexpected_message, f"unknown handshake message type {code}")
    return msg_type, body
