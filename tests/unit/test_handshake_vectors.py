"""Replay the published test vectors, and check them the way an outside implementer would.

Two kinds of check per vector:

* the library, configured from the vector's inputs alone (PEMs, hex keys, randoms, suite names,
  validation time), must produce exactly the vector's frames (deterministic vectors) or the
  reproducible prefix of them (RSA transport);
* an independent recomputation from docs/protocol.rst using only the standard library and
  ``cryptography`` primitives -- no ``tlsotp.handshake`` code -- must agree with every message,
  transcript hash, secret, signature, Finished value and record in the vector.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from twisted.trial import unittest

from tests.vectors import fixtures, make_vectors
from tests.vectors.harness import Pair
from tlsotp.handshake import (
    ApplicationData,
    ClientConfig,
    ClientConnection,
    Group,
    PeerClosed,
    ServerConfig,
    ServerConnection,
    parse_suite_list,
    suite_named,
)
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier

VECTOR_FILES = sorted(Path(make_vectors.__file__).parent.glob("handshake-*.json"))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def certs(pems: list[str]) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificate(p.encode()) for p in pems)


def private_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


def ephemeral_from_hex(group: str, hex_key: str) -> Any:
    if group == "X25519":
        return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))
    curve = ec.SECP256R1() if group == "P256" else ec.SECP384R1()
    return ec.derive_private_key(int(hex_key, 16), curve)


class VectorTests(unittest.SynchronousTestCase):
    def test_vectors_exist_for_each_hash_and_for_rsa_transport(self) -> None:
        suites = [load(p)["suite"] for p in VECTOR_FILES]
        ecdsa = [s for s in suites if s["key_exchange"] == "ECDHE" and s["authentication"] == "ECDSA"]
        self.assertEqual({s["hash"] for s in ecdsa}, {"SHA256", "SHA384"})
        self.assertTrue(any(s["key_exchange"] == "RSA_OAEP" for s in suites))
        for path in VECTOR_FILES:
            vector = load(path)
            self.assertEqual(vector["deterministic"], vector["suite"]["key_exchange"] == "ECDHE")
        # Both exchanges of the OTP application, each in a deterministic vector.
        kinds = {(load(p)["application"], load(p)["deterministic"]) for p in VECTOR_FILES}
        self.assertLessEqual({("otp", True), ("confirm", True)}, kinds)

    def test_frames_follow_the_documented_flow(self) -> None:
        for path in VECTOR_FILES:
            vector = load(path)
            flow = []
            for frame in vector["frames"]:
                data = bytes.fromhex(frame["hex"])
                name = {21: "alert", 23: "data"}.get(data[0]) or {
                    1: "ClientHello", 2: "ServerHello", 11: "Certificate", 15: "CertificateVerify",
                    16: "KeyTransport", 20: "Finished",
                }[data[1]]
                flow.append(f"{frame['direction']} {name}")
            transport = ["c2s KeyTransport"] if vector["suite"]["key_exchange"] == "RSA_OAEP" else []
            self.assertEqual(flow, [
                "c2s ClientHello",
                "s2c ServerHello", "s2c Certificate", "s2c CertificateVerify",
                *transport, "c2s Certificate", "c2s CertificateVerify", "c2s Finished", "c2s data",
                "s2c Finished", "s2c data", "s2c alert",
                "c2s alert",
            ], path.name)

    # -- replay with the library ------------------------------------------------------------

    def replay(self, vector: dict[str, Any]) -> Pair:
        inputs = vector["inputs"]
        root = x509.load_pem_x509_certificate(inputs["root_certificate_pem"].encode())
        when = datetime.datetime.fromisoformat(inputs["validation_time"])

        def clock() -> datetime.datetime:
            return when

        client_eph = {Group[g]: ephemeral_from_hex(g, k) for g, k in inputs["client_ephemeral_private_keys"].items()}
        server_eph = {Group[g]: ephemeral_from_hex(g, k) for g, k in inputs.get("server_ephemeral_private_key", {}).items()}
        client_random = [bytes.fromhex(inputs["client_random"])]
        server_random = [bytes.fromhex(inputs["server_random"])]
        if "transported_secret" in inputs:
            client_random.append(bytes.fromhex(inputs["transported_secret"]))
            server_random.append(bytes.fromhex(inputs["server_replacement_secret"]))
        client_config = ClientConfig(
            certificate_chain=certs(inputs["client_chain_pem"]),
            private_key=private_key(inputs["client_private_key_pem"]),
            validate_peer=PeerVerifier(root, Role.SERVER, expected_names=[inputs["server_name"]], clock=clock),
            suites=parse_suite_list(",".join(inputs["client_offered_suites"])),
            random_bytes=fixtures.FixedRandom(client_random),
            ephemeral_keys=client_eph.__getitem__,
        )
        server_config = ServerConfig(
            certificate_chain=certs(inputs["server_chain_pem"]),
            private_key=private_key(inputs["server_private_key_pem"]),
            validate_peer=PeerVerifier(root, Role.CLIENT, clock=clock),
            suites=parse_suite_list(",".join(inputs["server_suites"])),
            random_bytes=fixtures.FixedRandom(server_random),
            ephemeral_keys=server_eph.__getitem__,
        )
        pair = Pair(ClientConnection(client_config), ServerConnection(server_config))
        request, answer = bytes.fromhex(inputs["client_application_data"]), bytes.fromhex(inputs["server_application_data"])
        pair.run_session(request, answer)
        self.assertEqual(pair.client.suite, suite_named(vector["suite"]["name"]))
        self.assertIn(ApplicationData(request), pair.server_events)
        self.assertEqual(pair.client_events[-2:], [ApplicationData(answer), PeerClosed()])
        self.assertTrue(pair.client.closed and pair.server.closed)
        return pair

    def test_library_reproduces_every_frame_of_deterministic_vectors(self) -> None:
        checked = 0
        for path in VECTOR_FILES:
            vector = load(path)
            pair = self.replay(vector)
            produced = [{"direction": d, "hex": f.hex()} for d, f in pair.wire]
            if vector["deterministic"]:
                self.assertEqual(produced, vector["frames"], path.name)
                checked += 1
            else:
                # ClientHello, ServerHello and the server Certificate do not depend on RSA randomness.
                self.assertEqual(produced[:3], vector["frames"][:3], path.name)
                self.assertEqual(len(produced), len(vector["frames"]))
        self.assertGreaterEqual(checked, 2)

    def test_generator_matches_the_committed_deterministic_vectors(self) -> None:
        for spec in make_vectors.SPECS:
            committed = load(spec.path)
            if committed["deterministic"]:
                self.assertEqual(make_vectors.build(spec), committed, spec.path.name)

    # -- independent recomputation ----------------------------------------------------------

    def test_independent_recomputation_agrees_with_every_vector(self) -> None:
        for path in VECTOR_FILES:
            IndependentCheck(self, load(path)).run()


def decode_otp_message(data: bytes) -> dict[str, Any]:
    """The OTP application layer read from docs/protocol.rst alone: u8 type, then the fields;
    text16 = u16 byte length + UTF-8, bytes8 = u8 length + bytes, u64 big-endian."""
    pos = 1

    def take(n: int) -> bytes:
        nonlocal pos
        assert pos + n <= len(data), "truncated"
        pos += n
        return data[pos - n : pos]

    def text16() -> str:
        return take(int.from_bytes(take(2), "big")).decode("utf-8")

    kind = data[0]
    fields: dict[str, Any]
    if kind == 1:
        fields = {"type": "OTPRequest", "transaction": text16()}
    elif kind == 2:
        transaction_id = take(take(1)[0])
        assert len(transaction_id) == 16
        fields = {"type": "OTPGrant", "transaction_id": transaction_id.hex(), "transaction": text16(), "code": text16(),
                  "expires_at": int.from_bytes(take(8), "big"), "message": text16()}
        assert fields["message"] == f"The OTP for transferring {fields['transaction']} is {fields['code']}."
    elif kind == 3:
        fields = {"type": "ConfirmRequest", "transaction": text16(), "code": text16()}
    else:
        assert kind == 4, kind
        status = ["accepted", "wrong_code", "expired", "already_used", "locked", "unknown_transaction"][take(1)[0]]
        fields = {"type": "ConfirmResult", "status": status, "attempts_left": take(1)[0]}
    assert pos == len(data), "trailing bytes"
    return fields


class IndependentCheck:
    """What someone with only docs/protocol.rst and ``cryptography`` would compute."""

    def __init__(self, test: unittest.SynchronousTestCase, vector: dict[str, Any]) -> None:
        self.t, self.v = test, vector
        self.hash_name = vector["suite"]["hash"]
        self.hashlib = hashlib.sha256 if self.hash_name == "SHA256" else hashlib.sha384
        self.hlen = self.hashlib().digest_size
        self.messages = [(m["sender"], m["type"], bytes.fromhex(m["hex"])) for m in vector["messages"]]

    def crypto_hash(self) -> hashes.HashAlgorithm:
        return hashes.SHA256() if self.hash_name == "SHA256" else hashes.SHA384()

    def expand_label(self, secret: bytes, label: str, context: bytes, length: int) -> bytes:
        full = b"tlsotp1 " + label.encode()
        info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
        out, block, counter = b"", b"", 1
        while len(out) < length:
            block = hmac.new(secret, block + info + bytes([counter]), self.hashlib).digest()
            out, counter = out + block, counter + 1
        return out[:length]

    def extract(self, salt: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, ikm, self.hashlib).digest()

    def through(self, sender: str, kind: str) -> bytes:
        end = next(i for i, m in enumerate(self.messages) if m[0] == sender and m[1] == kind)
        return self.hashlib(b"".join(m[2] for m in self.messages[: end + 1])).digest()

    def message(self, sender: str, kind: str) -> bytes:
        return next(m[2] for m in self.messages if m[0] == sender and m[1] == kind)

    def run(self) -> None:
        t, v, inputs, secrets = self.t, self.v, self.v["inputs"], self.v["secrets"]
        name = v["suite"]["name"]

        # Message headers and fields at their documented offsets.
        for _, _, raw in self.messages:
            t.assertEqual(int.from_bytes(raw[1:4], "big"), len(raw) - 4)
        client_hello, server_hello = self.message("client", "ClientHello"), self.message("server", "ServerHello")
        versions_len = client_hello[4]
        t.assertEqual(client_hello[5 : 5 + versions_len], b"\x00\x01")
        t.assertEqual(client_hello[5 + versions_len : 37 + versions_len].hex(), inputs["client_random"])
        t.assertEqual(server_hello[4:6], b"\x00\x01")
        t.assertEqual(server_hello[6:38].hex(), inputs["server_random"])
        t.assertEqual(f"0x{int.from_bytes(server_hello[38:40], 'big'):04x}", v["suite"]["code"])
        share = server_hello[42 : 42 + int.from_bytes(server_hello[40:42], "big")]

        # The shared secret.
        if v["suite"]["key_exchange"] == "ECDHE":
            group = v["suite"]["group"]
            mine = ephemeral_from_hex(group, inputs["client_ephemeral_private_keys"][group])
            if group == "X25519":
                shared = mine.exchange(X25519PublicKey.from_public_bytes(share))
            else:
                curve = ec.SECP256R1() if group == "P256" else ec.SECP384R1()
                shared = mine.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, share))
        else:
            t.assertEqual(share, b"")
            kt = self.message("client", "KeyTransport")
            ciphertext = kt[6 : 6 + int.from_bytes(kt[4:6], "big")]
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
            shared = private_key(inputs["server_private_key_pem"]).decrypt(ciphertext, oaep)
            t.assertEqual(shared.hex(), inputs["transported_secret"])
        t.assertEqual(shared.hex(), secrets["shared_secret"], name)

        # Transcript hashes.
        for label, value in v["transcript_hashes"].items():
            _, sender, kind = label.split(" ")
            t.assertEqual(self.through(sender, kind).hex(), value, label)

        # Key schedule (TLS 1.3 section 7.1 with "tlsotp1 " labels).
        zeros, empty = bytes(self.hlen), self.hashlib(b"").digest()
        early = self.extract(zeros, zeros)
        handshake = self.extract(self.expand_label(early, "derived", empty, self.hlen), shared)
        hello_hash = self.through("server", "ServerHello")
        c_hs = self.expand_label(handshake, "c hs traffic", hello_hash, self.hlen)
        s_hs = self.expand_label(handshake, "s hs traffic", hello_hash, self.hlen)
        master = self.extract(self.expand_label(handshake, "derived", empty, self.hlen), zeros)
        client_finished_hash = self.through("client", "Finished")
        c_ap = self.expand_label(master, "c ap traffic", client_finished_hash, self.hlen)
        s_ap = self.expand_label(master, "s ap traffic", client_finished_hash, self.hlen)
        key_len = 16 if v["suite"]["aead"] == "AES_128_GCM" else 32
        mine = {
            "early_secret": early, "handshake_secret": handshake, "master_secret": master,
            "client_handshake_traffic_secret": c_hs, "server_handshake_traffic_secret": s_hs,
            "client_finished_key": self.expand_label(c_hs, "finished", b"", self.hlen),
            "server_finished_key": self.expand_label(s_hs, "finished", b"", self.hlen),
            "client_application_traffic_secret": c_ap, "server_application_traffic_secret": s_ap,
            "client_write_key": self.expand_label(c_ap, "key", b"", key_len),
            "client_write_iv": self.expand_label(c_ap, "iv", b"", 12),
            "server_write_key": self.expand_label(s_ap, "key", b"", key_len),
            "server_write_iv": self.expand_label(s_ap, "iv", b"", 12),
        }
        for key, value in mine.items():
            t.assertEqual(value.hex(), secrets[key], f"{name}: {key}")

        # Both CertificateVerify signatures.
        server_leaf = x509.load_pem_x509_certificate(inputs["server_chain_pem"][0].encode())
        client_leaf = x509.load_pem_x509_certificate(inputs["client_chain_pem"][0].encode())
        for sender, leaf, context in (
            ("server", server_leaf, b"tlsotp/1, server CertificateVerify"),
            ("client", client_leaf, b"tlsotp/1, client CertificateVerify"),
        ):
            content = b" " * 64 + context + b"\x00" + self.through(sender, "Certificate")
            t.assertEqual(content.hex(), v["signed_content"][sender])
            cv = self.message(sender, "CertificateVerify")
            signature = cv[8 : 8 + int.from_bytes(cv[6:8], "big")]
            public = leaf.public_key()
            if isinstance(public, ec.EllipticCurvePublicKey):
                public.verify(signature, content, ec.ECDSA(self.crypto_hash()))
            else:
                assert isinstance(public, rsa.RSAPublicKey)
                pss = padding.PSS(mgf=padding.MGF1(self.crypto_hash()), salt_length=self.hlen)
                public.verify(signature, content, pss, self.crypto_hash())

        # Both Finished messages.
        client_finished = hmac.new(mine["client_finished_key"], self.through("client", "CertificateVerify"), self.hashlib).digest()
        server_finished = hmac.new(mine["server_finished_key"], client_finished_hash, self.hashlib).digest()
        t.assertEqual(self.message("client", "Finished")[4:], client_finished)
        t.assertEqual(self.message("server", "Finished")[4:], server_finished)

        # Protected records: every frame after its sender's Finished, application data and
        # alerts alike; nonce = iv XOR seq, aad = type || u16 length.
        aead_class = ChaCha20Poly1305 if v["suite"]["aead"] == "CHACHA20_POLY1305" else AESGCM
        sequence = {"client": 0, "server": 0}
        finished = {"client": False, "server": False}
        protected = []
        for frame_entry in v["frames"]:
            frame = bytes.fromhex(frame_entry["hex"])
            sender = "client" if frame_entry["direction"] == "c2s" else "server"
            if frame[0] == 22:
                finished[sender] = finished[sender] or frame[1] == 20
                continue
            t.assertTrue(finished[sender], "protected record before the sender's Finished")
            iv = mine[f"{sender}_write_iv"]
            nonce = bytes(a ^ b for a, b in zip(iv, sequence[sender].to_bytes(12, "big")))
            sequence[sender] += 1
            aad = frame[:1] + (len(frame) - 1).to_bytes(2, "big")
            plaintext = aead_class(mine[f"{sender}_write_key"]).decrypt(nonce, frame[1:], aad)
            protected.append({"sender": sender, "nonce": nonce.hex(), "aad": aad.hex(), "plaintext": plaintext.hex(),
                              "frame": frame.hex()})
        t.assertEqual(len(protected), len(v["application_records"]))
        for mine_record, record in zip(protected, v["application_records"]):
            for key in ("sender", "nonce", "aad", "plaintext", "frame"):
                t.assertEqual(mine_record[key], record[key], f"{name}: record {key}")
            plaintext = bytes.fromhex(record["plaintext"])
            if record["content_type"] == "alert":
                t.assertEqual(plaintext, b"\x00")  # close_notify
            else:
                t.assertEqual(decode_otp_message(plaintext), record["message"], name)
        t.assertEqual(bytes.fromhex(v["application_records"][0]["plaintext"]).hex(), inputs["client_application_data"])

        # The certificates were valid at the pinned time (so the vector cannot expire).
        root = x509.load_pem_x509_certificate(inputs["root_certificate_pem"].encode())
        when = datetime.datetime.fromisoformat(inputs["validation_time"])
        PeerVerifier(root, Role.SERVER, expected_names=[inputs["server_name"]], clock=lambda: when)(certs(inputs["server_chain_pem"]))
        PeerVerifier(root, Role.CLIENT, clock=lambda: when)(certs(inputs["client_chain_pem"]))
