"""Write the published handshake test vectors: ``python -m tests.vectors.make_vectors``.

Each vector is one complete session as docs/protocol.rst's flow runs it: the handshake, the
client's OTP application request in its second flight, the server's answer after its Finished,
and both close_notify alerts (the server's, and the client's reply), with every input
fixed (randoms, ephemeral keys, certificate keys and certificates, validation time) and every
intermediate value written out (message bytes, transcript hashes, secrets, keys, IVs, frames),
so that an independent implementation can check itself against docs/protocol.rst and the
vector alone. ``tests/unit/test_handshake_vectors.py`` replays them.

ECDHE+ECDSA vectors are fully reproducible: rerunning this script rewrites them unchanged.
RSA-OAEP and RSA-PSS draw randomness inside ``cryptography`` that cannot be injected, so the
RSA transport vector's KeyTransport and server CertificateVerify (and everything hashed after
them) change on every run; its ``nondeterministic`` field says which messages, and the replay
test checks those by verification rather than by byte equality.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.vectors import fixtures
from tests.vectors.harness import Pair
from tlsotp.handshake import (
    DEFAULT_SUITES,
    ClientConfig,
    ClientConnection,
    ServerConfig,
    ServerConnection,
    Suite,
    suite_named,
)
from tlsotp.handshake.frames import ContentType
from tlsotp.handshake.key_exchange import EphemeralPrivateKey, ecdh_shared_secret, encode_key_share
from tlsotp.handshake.keyschedule import derive_application_secrets, derive_handshake_secrets
from tlsotp.handshake.messages import HandshakeType
from tlsotp.handshake.signatures import CLIENT_CONTEXT, SERVER_CONTEXT, signed_content
from tlsotp.handshake.suites import KeyExchange, groups_of
from tlsotp.otp import messages as otp_messages

VECTORS_DIR = Path(__file__).parent

CLIENT_RANDOM = bytes(range(0x00, 0x20))
SERVER_RANDOM = bytes(range(0x80, 0xA0))
TRANSPORTED_SECRET = bytes(range(0xC0, 0xE0))
RSA_REPLACEMENT_SECRET = b"\xee" * 32  # drawn by the server before decrypting; unused when decryption succeeds
TRANSACTION = "Rs 1,00,000 to your friend's account"
CODE = "492817"
TRANSACTION_ID = bytes(range(0x10, 0x20))
EXPIRES_AT = int(fixtures.VECTOR_TIME.timestamp()) + 300

#: The two exchanges of the OTP application: a request for a code, and a confirmation of one.
APPLICATIONS: dict[str, tuple[otp_messages.AppMessage, otp_messages.AppMessage]] = {
    "otp": (
        otp_messages.OTPRequest(TRANSACTION),
        otp_messages.OTPGrant(TRANSACTION_ID, TRANSACTION, CODE, EXPIRES_AT, otp_messages.otp_message(TRANSACTION, CODE)),
    ),
    "confirm": (
        # Not ASCII: pins UTF-8 and NFC (U+20B9 RUPEE SIGN, U+00EB precomposed) in the vectors.
        otp_messages.ConfirmRequest("\u20b91,00,000 to Zo\u00eb's account", "492818"),
        otp_messages.ConfirmResult(otp_messages.ConfirmStatus.wrong_code, 2),
    ),
}


def message_fields(message: otp_messages.AppMessage) -> dict[str, Any]:
    """The decoded fields of an OTP application message, as the vector spells them."""
    fields: dict[str, Any] = {"type": type(message).__name__}
    for name, value in vars(message).items():
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, otp_messages.ConfirmStatus):
            value = value.name
        fields[name] = value
    return fields

_MESSAGE_NAMES = {
    HandshakeType.client_hello: "ClientHello",
    HandshakeType.server_hello: "ServerHello",
    HandshakeType.certificate: "Certificate",
    HandshakeType.certificate_verify: "CertificateVerify",
    HandshakeType.key_transport: "KeyTransport",
    HandshakeType.finished: "Finished",
}


@dataclass(frozen=True)
class VectorSpec:
    suite_name: str
    server_key: str
    client_key: str
    application: str  # a key of APPLICATIONS

    @property
    def request(self) -> bytes:
        return otp_messages.encode(APPLICATIONS[self.application][0])

    @property
    def answer(self) -> bytes:
        return otp_messages.encode(APPLICATIONS[self.application][1])

    @property
    def suite(self) -> Suite:
        return suite_named(self.suite_name)

    @property
    def path(self) -> Path:
        return VECTORS_DIR / f"handshake-{self.suite_name}.json"


SPECS = (
    VectorSpec("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384", "ec-p256", "ec-p256", "otp"),
    VectorSpec("TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256", "ec-p384", "ec-p256", "confirm"),
    VectorSpec("TLSOTP_ECDHE_X25519_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ec-p256", "ec-p384", "confirm"),
    VectorSpec("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384", "rsa-2048", "ec-p256", "otp"),
)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: Any) -> str:
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return data.decode()


def ephemeral_private_hex(key: EphemeralPrivateKey) -> str:
    """X25519: the raw 32-byte private key; P-256/P-384: the private scalar, big-endian, full width."""
    if isinstance(key, X25519PrivateKey):
        return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()).hex()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    width = (key.curve.key_size + 7) // 8
    return key.private_numbers().private_value.to_bytes(width, "big").hex()


def run(spec: VectorSpec) -> Pair:
    """The whole session (handshake, request, answer, close_notify both ways), every input fixed."""
    client_id, server_id = fixtures.identity("client", spec.client_key), fixtures.identity("server", spec.server_key)
    client_random = [CLIENT_RANDOM] + ([TRANSPORTED_SECRET] if spec.suite.key_exchange is KeyExchange.RSA_OAEP else [])
    server_random = [SERVER_RANDOM] + ([RSA_REPLACEMENT_SECRET] if spec.suite.key_exchange is KeyExchange.RSA_OAEP else [])
    client_config = ClientConfig(
        certificate_chain=client_id.chain,
        private_key=client_id.key,
        validate_peer=fixtures.server_verifier(),
        suites=DEFAULT_SUITES,
        random_bytes=fixtures.FixedRandom(client_random),
        ephemeral_keys=fixtures.fixed_ephemeral_keys("client"),
    )
    server_config = ServerConfig(
        certificate_chain=server_id.chain,
        private_key=server_id.key,
        validate_peer=fixtures.client_verifier(),
        suites=(spec.suite,),
        random_bytes=fixtures.FixedRandom(server_random),
        ephemeral_keys=fixtures.fixed_ephemeral_keys("server"),
    )
    pair = Pair(ClientConnection(client_config), ServerConnection(server_config))
    pair.run_session(spec.request, spec.answer)
    assert pair.client.suite == spec.suite and pair.server.handshake_complete, "vector handshake failed"
    assert pair.client.closed and pair.server.closed, "vector session did not close cleanly"
    return pair


def _digest(suite: Suite, messages: list[bytes]) -> bytes:
    h = hashes.Hash(suite.hash.new())
    for message in messages:
        h.update(message)
    return h.finalize()


def build(spec: VectorSpec) -> dict[str, Any]:
    suite = spec.suite
    pair = run(spec)
    client_id, server_id = fixtures.identity("client", spec.client_key), fixtures.identity("server", spec.server_key)

    messages: list[dict[str, str]] = []
    raw_messages: list[bytes] = []
    for direction, frame in pair.wire:
        if frame[0] == ContentType.handshake:
            raw_messages.append(frame[1:])
            messages.append(
                {
                    "sender": "client" if direction == "c2s" else "server",
                    "type": _MESSAGE_NAMES[HandshakeType(frame[1])],
                    "hex": frame[1:].hex(),
                }
            )
    points = {f"through {m['sender']} {m['type']}": _digest(suite, raw_messages[: i + 1]).hex() for i, m in enumerate(messages)}

    def index(sender: str, kind: str) -> int:
        return next(i for i, m in enumerate(messages) if m["sender"] == sender and m["type"] == kind)

    hello_hash = _digest(suite, raw_messages[: index("server", "ServerHello") + 1])
    client_finished_hash = _digest(suite, raw_messages[: index("client", "Finished") + 1])
    if suite.group is not None:
        client_eph = fixtures.ephemeral_key("client", suite.group)
        server_eph = fixtures.ephemeral_key("server", suite.group)
        shared = ecdh_shared_secret(client_eph, server_eph.public_key())
    else:
        shared = TRANSPORTED_SECRET
    hs = derive_handshake_secrets(suite.hash, shared, hello_hash)
    ap = derive_application_secrets(suite, hs.master_secret, client_finished_hash)

    inputs: dict[str, Any] = {
        "client_random": CLIENT_RANDOM.hex(),
        "server_random": SERVER_RANDOM.hex(),
        "client_offered_suites": [s.name for s in DEFAULT_SUITES],
        "server_suites": [suite.name],
        "client_ephemeral_private_keys": {
            g.name: ephemeral_private_hex(fixtures.ephemeral_key("client", g)) for g in groups_of(DEFAULT_SUITES)
        },
        "client_key_shares": {
            g.name: encode_key_share(fixtures.ephemeral_key("client", g)).hex() for g in groups_of(DEFAULT_SUITES)
        },
        "validation_time": fixtures.VECTOR_TIME.isoformat(),
        "server_name": fixtures.SERVER_NAME,
        "root_certificate_pem": pem(fixtures.root()),
        "server_chain_pem": [pem(c) for c in server_id.chain],
        "server_private_key_pem": key_pem(server_id.key),
        "client_chain_pem": [pem(c) for c in client_id.chain],
        "client_private_key_pem": key_pem(client_id.key),
        "client_application_data": spec.request.hex(),
        "server_application_data": spec.answer.hex(),
    }
    if suite.group is not None:
        inputs["server_ephemeral_private_key"] = {suite.group.name: ephemeral_private_hex(fixtures.ephemeral_key("server", suite.group))}
    else:
        inputs["transported_secret"] = TRANSPORTED_SECRET.hex()
        inputs["server_replacement_secret"] = RSA_REPLACEMENT_SECRET.hex()

    # Every protected record: after its sender's Finished, application data and alerts alike.
    records = []
    sequence = {"client": 0, "server": 0}
    finished = {"client": False, "server": False}
    request, answer = APPLICATIONS[spec.application]
    for direction, frame in pair.wire:
        sender = "client" if direction == "c2s" else "server"
        if frame[0] == ContentType.handshake:
            finished[sender] = finished[sender] or frame[1] == HandshakeType.finished
            continue
        assert finished[sender], "a protected record before its sender's Finished"
        keys = ap.client_keys if sender == "client" else ap.server_keys
        seq = sequence[sender]
        sequence[sender] += 1
        record: dict[str, Any] = {
            "sender": sender,
            "content_type": ContentType(frame[0]).name,
            "sequence_number": seq,
            "nonce": bytes(a ^ b for a, b in zip(keys.iv, seq.to_bytes(12, "big"))).hex(),
            "aad": frame[:1].hex() + (len(frame) - 1).to_bytes(2, "big").hex(),
        }
        if frame[0] == ContentType.application_data:
            message = request if sender == "client" else answer
            record["plaintext"] = otp_messages.encode(message).hex()
            record["message"] = message_fields(message)
        else:
            record["plaintext"] = "00"  # close_notify
            record["alert"] = "close_notify"
        record["frame"] = frame.hex()
        records.append(record)

    return {
        "description": (
            f"tlsotp/1 session with {suite.name}: the client offers every suite, the server accepts only this one; "
            f"the client sends {type(request).__name__} in its second flight, the server answers "
            f"{type(answer).__name__} after its Finished and closes with close_notify, and the client "
            "replies close_notify. See docs/protocol.rst for every format and derivation."
        ),
        "protocol_version": 1,
        "suite": {
            "name": suite.name,
            "code": f"0x{suite.code:04x}",
            "key_exchange": suite.key_exchange.value,
            "group": suite.group.name if suite.group is not None else None,
            "authentication": suite.authentication.value,
            "aead": suite.aead.value,
            "hash": suite.hash.value,
        },
        "deterministic": suite.key_exchange is KeyExchange.ECDHE,
        "nondeterministic": (
            []
            if suite.key_exchange is KeyExchange.ECDHE
            else [
                "server CertificateVerify signature (RSA-PSS salt)",
                "client KeyTransport ciphertext (RSA-OAEP seed)",
                "everything that covers the transcript after them: the client CertificateVerify, both Finished "
                "messages, the application traffic secrets, keys and IVs, and the records",
            ]
        ),
        "inputs": inputs,
        "messages": messages,
        "transcript_hashes": points,
        "signed_content": {
            "server": signed_content(SERVER_CONTEXT, bytes.fromhex(points["through server Certificate"])).hex(),
            "client": signed_content(CLIENT_CONTEXT, bytes.fromhex(points["through client Certificate"])).hex(),
        },
        "secrets": {
            "shared_secret": shared.hex(),
            "early_secret": hs.early_secret.hex(),
            "derived_early": hs.derived_early.hex(),
            "handshake_secret": hs.handshake_secret.hex(),
            "client_handshake_traffic_secret": hs.client_handshake_traffic.hex(),
            "server_handshake_traffic_secret": hs.server_handshake_traffic.hex(),
            "client_finished_key": hs.client_finished_key.hex(),
            "server_finished_key": hs.server_finished_key.hex(),
            "derived_handshake": hs.derived_handshake.hex(),
            "master_secret": hs.master_secret.hex(),
            "client_application_traffic_secret": ap.client_application_traffic.hex(),
            "server_application_traffic_secret": ap.server_application_traffic.hex(),
            "client_write_key": ap.client_keys.key.hex(),
            "client_write_iv": ap.client_keys.iv.hex(),
            "server_write_key": ap.server_keys.key.hex(),
            "server_write_iv": ap.server_keys.iv.hex(),
        },
        "application": spec.application,
        "application_records": records,
        "frames": [{"direction": d, "hex": f.hex()} for d, f in pair.wire],
    }


def main(argv: list[str]) -> int:
    for spec in SPECS:
        vector = build(spec)
        spec.path.write_text(json.dumps(vector, indent=2) + "\n")
        print(f"wrote {spec.path.relative_to(Path.cwd()) if spec.path.is_relative_to(Path.cwd()) else spec.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
