"""hkdf_expand_label as one HMAC: exactly HKDF-Expand (cryptography's) for every length."""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from tlsotp.codec import Writer
from tlsotp.handshake.keyschedule import LABEL_PREFIX, derive_secret, empty_hash, hkdf_expand_label, hkdf_extract
from tlsotp.handshake.suites import HashAlgorithm


def reference(h: HashAlgorithm, secret: bytes, label: str, context: bytes, length: int) -> bytes:
    info = Writer().u16(length).bytes8(LABEL_PREFIX + label.encode("ascii")).bytes8(context).getvalue()
    return HKDFExpand(algorithm=h.new(), length=length, info=info).derive(secret)


class OneBlockExpandTests(unittest.SynchronousTestCase):
    @given(
        h=st.sampled_from(list(HashAlgorithm)),
        secret=st.binary(min_size=1, max_size=64),
        label=st.sampled_from(["key", "iv", "finished", "derived", "c hs traffic", "s ap traffic"]),
        context=st.one_of(st.just(b""), st.binary(max_size=48)),
        length=st.integers(min_value=1, max_value=120),
    )
    def test_equals_hkdf_expand(self, h: HashAlgorithm, secret: bytes, label: str, context: bytes, length: int) -> None:
        """Up to the hash length one HMAC block; beyond it the HKDFExpand path; both equal HKDF."""
        self.assertEqual(hkdf_expand_label(h, secret, label, context, length), reference(h, secret, label, context, length))

    def test_cached_early_secrets_are_the_computed_ones(self) -> None:
        from tlsotp.handshake.keyschedule import derive_handshake_secrets

        for h in HashAlgorithm:
            zeros = bytes(h.digest_size)
            early = hkdf_extract(h, zeros, zeros)
            for _ in range(2):  # the first call fills the cache, the second reads it
                secrets = derive_handshake_secrets(h, b"s" * 32, b"h" * h.digest_size)
                self.assertEqual(secrets.early_secret, early)
                self.assertEqual(secrets.derived_early, derive_secret(h, early, "derived", empty_hash(h)))
                self.assertEqual(empty_hash(h), _hashlib_empty(h))


def _hashlib_empty(h: HashAlgorithm) -> bytes:
    import hashlib

    return hashlib.new(h.value.lower()).digest()
