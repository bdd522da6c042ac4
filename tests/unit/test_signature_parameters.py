"""Signature and transport parameters built once per hash and reused: the same bytes as fresh ones.

ECDSA (deterministic, RFC 6979), RSA-PSS and RSA-OAEP parameter objects are immutable
descriptors; ``signatures`` and ``key_exchange`` cache them. Signing twice with the cached ones
gives what freshly built parameters give, and each verifies with freshly built parameters.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from twisted.trial import unittest

from tests.credentials import cached_key
from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.key_exchange import unwrap_secret, wrap_secret
from tlsotp.handshake.signatures import SERVER_CONTEXT, sign, signed_content, verify
from tlsotp.handshake.suites import HashAlgorithm
from tlsotp.pki.keys import KeyType


def fresh_hash(h: HashAlgorithm) -> hashes.HashAlgorithm:
    return hashes.SHA256() if h is HashAlgorithm.SHA256 else hashes.SHA384()


class CachedParameterTests(unittest.SynchronousTestCase):
    def test_ecdsa_signatures_are_the_fresh_parameters_ones(self) -> None:
        key = cached_key(KeyType.EC_P256, "signature-parameters")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        for h in HashAlgorithm:
            content = signed_content(SERVER_CONTEXT, b"t" * h.digest_size)
            expected = key.sign(content, ec.ECDSA(fresh_hash(h), deterministic_signing=True))
            self.assertEqual([sign(key, h, content) for _ in range(2)], [expected, expected])
            for _ in range(2):
                verify(key.public_key(), h, expected, content, "server")
            error = self.assertRaises(AlertError, verify, key.public_key(), h, expected, content + b"x", "server")
            self.assertEqual(error.alert, Alert.decrypt_error)

    def test_rsa_pss_signatures_verify_with_fresh_parameters(self) -> None:
        key = cached_key(KeyType.RSA_2048, "signature-parameters")
        for h in HashAlgorithm:
            content = signed_content(SERVER_CONTEXT, b"t" * h.digest_size)
            for _ in range(2):
                signature = sign(key, h, content)  # type: ignore[arg-type]
                fresh = padding.PSS(mgf=padding.MGF1(fresh_hash(h)), salt_length=h.digest_size)
                key.public_key().verify(signature, content, fresh, fresh_hash(h))  # type: ignore[call-arg,arg-type]
                verify(key.public_key(), h, signature, content, "server")  # type: ignore[arg-type]

    def test_rsa_oaep_transport_round_trips_repeatedly(self) -> None:
        key = cached_key(KeyType.RSA_2048, "signature-parameters")
        secret, replacement = b"s" * 32, b"r" * 32
        for _ in range(2):
            wrapped = wrap_secret(key.public_key(), secret)  # type: ignore[arg-type]
            self.assertEqual(unwrap_secret(key, wrapped, replacement), secret)  # type: ignore[arg-type]
            self.assertEqual(unwrap_secret(key, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), replacement), replacement)  # type: ignore[arg-type]
