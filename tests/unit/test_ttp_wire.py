"""The TTP's wire messages and token proofs, without any network."""

from __future__ import annotations

import secrets

from twisted.trial import unittest

from tlsotp.alerts import Alert, AlertError
from tlsotp.codec import Writer
from tlsotp.pki.csr import MAX_CSR_BYTES
from tlsotp.pki.roles import Role
from tlsotp.ttp import tokens, wire
from tlsotp.ttp.wire import Refusal, RequestRefused

NONCE = b"n" * wire.NONCE_BYTES
PROOF = b"p" * wire.PROOF_BYTES


def _requests() -> list[wire.Request]:
    return [
        wire.EnrollRequest("tokenid", Role.SERVER, "bank.example", NONCE, b"csr", PROOF),
        wire.EnrollRequest("tokenid", Role.CLIENT, "alice.example", NONCE, b"c" * MAX_CSR_BYTES, PROOF),
        wire.RenewRequest(b"cert", b"csr", NONCE, 1_700_000_000, b"sig"),
        wire.CRLRequest(),
    ]


def _replies() -> list[wire.Reply]:
    return [
        wire.Issued(b"root", b"leaf"),
        wire.CRLReply(b"root", b"crl" * 1000),
        wire.Refused(Refusal.token_spent, "token x was spent"),
    ]


class RoundTripTests(unittest.SynchronousTestCase):
    def test_requests(self) -> None:
        for request in _requests():
            self.assertEqual(wire.decode_request(wire.encode(request)), request)

    def test_replies(self) -> None:
        for reply in _replies():
            self.assertEqual(wire.decode_reply(wire.encode(reply)), reply)

    def test_bounds_hold_the_largest_real_messages(self) -> None:
        biggest_renew = wire.RenewRequest(
            b"c" * wire.MAX_CERT_BYTES, b"r" * MAX_CSR_BYTES, NONCE, 2**64 - 1, b"s" * wire.MAX_SIGNATURE_BYTES
        )
        self.assertEqual(len(wire.encode(biggest_renew)), wire.MAX_RENEW_REQUEST)
        self.assertLessEqual(wire.MAX_ENROLL_REQUEST, wire.MAX_REQUEST_LENGTH)
        biggest_crl = wire.CRLReply(b"c" * wire.MAX_CERT_BYTES, b"l" * wire.MAX_CRL_BYTES)
        self.assertEqual(len(wire.encode(biggest_crl)), wire.MAX_REPLY_LENGTH)

    def test_long_detail_is_cut_not_refused(self) -> None:
        reply = wire.decode_reply(wire.encode(wire.Refused(Refusal.bad_csr, "é" * 5000)))
        assert isinstance(reply, wire.Refused)
        self.assertLessEqual(len(reply.detail.encode()), wire.MAX_DETAIL_BYTES)


class DecodeRefusalTests(unittest.SynchronousTestCase):
    def assertRefused(self, code: Refusal, payload: bytes) -> None:
        with self.assertRaises(RequestRefused) as caught:
            wire.decode_request(payload)
        self.assertEqual(caught.exception.code, code)

    def test_empty_truncated_and_trailing(self) -> None:
        self.assertRefused(Refusal.decode_error, b"")
        encoded = wire.encode(_requests()[0])
        for cut in range(1, len(encoded)):
            self.assertRefused(Refusal.decode_error, encoded[:cut])
        self.assertRefused(Refusal.decode_error, encoded + b"\x00")
        self.assertRefused(Refusal.decode_error, wire.encode(wire.CRLRequest()) + b"x")

    def test_unknown_type(self) -> None:
        self.assertRefused(Refusal.unknown_message, b"\x07")
        self.assertRefused(Refusal.unknown_message, b"\x81" + b"\x00" * 10)  # a reply is no request

    def test_field_bounds(self) -> None:
        def enroll(token_id: bytes = b"id", role: int = 1, nonce: bytes = NONCE, csr: bytes = b"c", proof: bytes = PROOF) -> bytes:
            w = Writer().u8(wire.MessageType.enroll_request).bytes8(token_id).u8(role).text16("bank.example")
            return w.bytes8(nonce).bytes16(csr).bytes8(proof).getvalue()

        wire.decode_request(enroll())
        self.assertRefused(Refusal.decode_error, enroll(token_id=b""))
        self.assertRefused(Refusal.decode_error, enroll(token_id=b"\xff\xfe"))
        self.assertRefused(Refusal.decode_error, enroll(role=3))
        self.assertRefused(Refusal.decode_error, enroll(nonce=NONCE[:-1]))
        self.assertRefused(Refusal.decode_error, enroll(proof=PROOF + b"x"))
        self.assertRefused(Refusal.decode_error, enroll(csr=b""))
        self.assertRefused(Refusal.decode_error, enroll(csr=b"c" * (MAX_CSR_BYTES + 1)))

    def test_garbage_reply_is_a_decode_error(self) -> None:
        for payload in (b"", b"\x81\x00", b"\xff\x01\x00\x05ab"):
            with self.assertRaises(AlertError) as caught:
                wire.decode_reply(payload)
            self.assertEqual(caught.exception.alert, Alert.decode_error)
        with self.assertRaises(AlertError) as caught:
            wire.decode_reply(b"\x01")
        self.assertEqual(caught.exception.alert, Alert.unexpected_message)

    def test_unknown_refusal_code_is_kept_readable(self) -> None:
        reply = wire.decode_reply(Writer().u8(wire.MessageType.refused).u8(200).text16("new").getvalue())
        assert isinstance(reply, wire.Refused)
        self.assertEqual(reply.code, Refusal.internal_error)
        self.assertIn("200", reply.detail)


class TokenTests(unittest.SynchronousTestCase):
    def test_text_round_trip_hides_secret_in_repr(self) -> None:
        token = tokens.Token.generate()
        text = str(token)
        self.assertRegex(text, r"^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$")
        self.assertEqual(tokens.Token.parse(text), token)
        self.assertNotIn(text.split(".")[1], repr(token))

    def test_tokens_are_random(self) -> None:
        self.assertEqual(len({str(tokens.Token.generate()) for _ in range(50)}), 50)

    def test_malformed_tokens(self) -> None:
        good = str(tokens.Token.generate())
        for bad in ("", good.replace(".", ""), good + "x", good[:-1], good.replace(".", ".."), "a" * 22 + "." + "!" * 43):
            with self.assertRaises(ValueError):
                tokens.Token.parse(bad)

    def test_mac_key_is_not_the_secret_and_binds_the_id(self) -> None:
        token = tokens.Token.generate()
        self.assertNotEqual(token.mac_key(), token.secret)
        other_id = tokens.derive_mac_key("x" * 22, token.secret)
        self.assertNotEqual(token.mac_key(), other_id)

    def test_proof_binds_every_field(self) -> None:
        token = tokens.Token.generate()
        key = token.mac_key()
        args = (token.token_id, Role.SERVER, "bank.example", NONCE, b"csr")
        proof = tokens.enrollment_proof(key, *args)
        self.assertTrue(tokens.proof_is_valid(key, proof, *args))
        variants = [
            ("y" * 22, Role.SERVER, "bank.example", NONCE, b"csr"),
            (token.token_id, Role.CLIENT, "bank.example", NONCE, b"csr"),
            (token.token_id, Role.SERVER, "evil.example", NONCE, b"csr"),
            (token.token_id, Role.SERVER, "bank.example", secrets.token_bytes(32), b"csr"),
            (token.token_id, Role.SERVER, "bank.example", NONCE, b"csR"),
        ]
        for variant in variants:
            self.assertFalse(tokens.proof_is_valid(key, proof, *variant), variant)
        self.assertFalse(tokens.proof_is_valid(tokens.Token.generate().mac_key(), proof, *args))
