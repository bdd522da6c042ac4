"""hkdf_expand_label as one HMAC: exactly HKDF-Expand (cryptography's) for every length."""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from tests.unit.test_keyschedule import ref_expand_label
from tlsotp.codec import Writer
from tlsotp.handshake.keyschedule import (
    LABEL_PREFIX,
    derive_application_secrets,
    derive_handshake_secrets,
    derive_secret,
    empty_hash,
    hkdf_expand_label,
    hkdf_extract,
    traffic_keys,
)
from tlsotp.handshake.suites import ALL_SUITES, HashAlgorithm, Suite


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


class KeyedCopiesTests(unittest.SynchronousTestCase):
    """The schedule keys one HMAC per secret and expands copies of it (and copies a cached HMAC
    keyed with the constant handshake salt): every value must be the stand-alone functions'."""

    @given(
        suite=st.sampled_from(ALL_SUITES),
        shared=st.binary(min_size=1, max_size=64),
        hello=st.binary(min_size=32, max_size=48),
        finished=st.binary(min_size=32, max_size=48),
    )
    def test_schedule_equals_the_stand_alone_functions(self, suite: Suite, shared: bytes, hello: bytes, finished: bytes) -> None:
        h, n = suite.hash, suite.hash.digest_size
        for _ in range(2):  # the cached salt HMAC is copied, never consumed: same answer twice
            hs = derive_handshake_secrets(h, shared, hello)
            handshake = hkdf_extract(h, derive_secret(h, hkdf_extract(h, b"", bytes(n)), "derived", empty_hash(h)), shared)
            self.assertEqual(hs.handshake_secret, handshake)
            self.assertEqual(hs.client_handshake_traffic, derive_secret(h, handshake, "c hs traffic", hello))
            self.assertEqual(hs.server_handshake_traffic, derive_secret(h, handshake, "s hs traffic", hello))
            self.assertEqual(hs.derived_handshake, derive_secret(h, handshake, "derived", empty_hash(h)))
            self.assertEqual(hs.client_finished_key, hkdf_expand_label(h, hs.client_handshake_traffic, "finished", b"", n))
            self.assertEqual(hs.server_finished_key, hkdf_expand_label(h, hs.server_handshake_traffic, "finished", b"", n))
            self.assertEqual(hs.master_secret, hkdf_extract(h, hs.derived_handshake, bytes(n)))
            ap = derive_application_secrets(suite, hs.master_secret, finished)
            self.assertEqual(ap.client_application_traffic, derive_secret(h, hs.master_secret, "c ap traffic", finished))
            self.assertEqual(ap.server_application_traffic, derive_secret(h, hs.master_secret, "s ap traffic", finished))
            for keys, secret in ((ap.client_keys, ap.client_application_traffic), (ap.server_keys, ap.server_application_traffic)):
                self.assertEqual(keys.key, reference(h, secret, "key", b"", suite.aead.key_length))
                self.assertEqual(keys.iv, reference(h, secret, "iv", b"", 12))

    def test_traffic_keys_against_the_published_reference(self) -> None:
        """And against test_keyschedule's standard-library reference, for every suite."""
        secret = bytes(range(48))
        for suite in ALL_SUITES:
            keys = traffic_keys(suite, secret)
            ref_key = ref_expand_label(suite.hash, secret, b"key", b"", suite.aead.key_length, LABEL_PREFIX)
            self.assertEqual((keys.key, keys.iv), (ref_key, ref_expand_label(suite.hash, secret, b"iv", b"", 12, LABEL_PREFIX)))

    def test_long_contexts_refused_as_before(self) -> None:
        """A context over 255 bytes is the Writer's ValueError, whichever path builds the label."""
        for h in HashAlgorithm:
            self.assertRaises(ValueError, hkdf_expand_label, h, b"s" * 32, "c hs traffic", b"x" * 256, h.digest_size)
            self.assertRaises(ValueError, derive_application_secrets, ALL_SUITES[0], b"s" * 48, b"x" * 256)


def _hashlib_empty(h: HashAlgorithm) -> bytes:
    import hashlib

    return hashlib.new(h.value.lower()).digest()
