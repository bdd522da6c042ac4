"""The record layer alone: nonce and AAD construction, and what it refuses."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.frames import ContentType
from tlsotp.handshake.keyschedule import TrafficKeys
from tlsotp.handshake.limits import MAX_PLAINTEXT
from tlsotp.handshake.record import RecordOpener, RecordSealer, record_aad, record_nonce
from tlsotp.handshake.suites import Aead

IV = bytes.fromhex("000102030405060708090a0b")


def keys(aead: Aead, fill: int = 0x5A) -> TrafficKeys:
    return TrafficKeys(key=bytes([fill]) * aead.key_length, iv=IV)


class NonceAndAadTests(unittest.SynchronousTestCase):
    def test_nonce_is_iv_xor_left_padded_sequence(self) -> None:
        self.assertEqual(record_nonce(IV, 0), IV)
        self.assertEqual(record_nonce(IV, 1).hex(), "000102030405060708090a0a")
        self.assertEqual(record_nonce(IV, 0x0102030405060708).hex(), "00010203050705030d0f0d03")
        self.assertEqual(record_nonce(bytes(12), 2**64 - 1).hex(), "00000000ffffffffffffffff")

    @given(iv=st.binary(min_size=12, max_size=12), seq=st.integers(min_value=0, max_value=2**64 - 1))
    def test_nonce_is_the_bytewise_xor(self, iv: bytes, seq: int) -> None:
        """The integer XOR gives exactly RFC 8446's byte-by-byte XOR with the padded sequence."""
        self.assertEqual(record_nonce(iv, seq), bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"))))

    def test_nonce_refuses_other_iv_lengths(self) -> None:
        for length in (0, 11, 13):
            self.assertRaises(ValueError, record_nonce, bytes(length), 0)

    def test_nonce_refuses_sequences_beyond_64_bits(self) -> None:
        self.assertRaises(ValueError, record_nonce, IV, 2**64)
        self.assertRaises(ValueError, record_nonce, IV, -1)

    def test_aad_is_content_type_and_ciphertext_length(self) -> None:
        self.assertEqual(record_aad(ContentType.application_data, 0x0123), b"\x17\x01\x23")
        self.assertEqual(record_aad(ContentType.alert, 17), b"\x15\x00\x11")

    def test_ciphertext_is_plain_aead_with_that_nonce_and_aad(self) -> None:
        """What an independent implementation would compute from the documentation."""
        for aead, cls in ((Aead.AES_128_GCM, AESGCM), (Aead.AES_256_GCM, AESGCM), (Aead.CHACHA20_POLY1305, ChaCha20Poly1305)):
            sealer = RecordSealer(aead, keys(aead))
            sealer.seal(ContentType.application_data, b"first")
            second = sealer.seal(ContentType.application_data, b"second")
            expected = cls(keys(aead).key).encrypt(record_nonce(IV, 1), b"second", record_aad(ContentType.application_data, 6 + 16))
            self.assertEqual(second, expected, aead.value)


class RoundTripTests(unittest.SynchronousTestCase):
    def test_records_open_in_order_for_every_aead(self) -> None:
        for aead in Aead:
            sealer, opener = RecordSealer(aead, keys(aead)), RecordOpener(aead, keys(aead))
            records = [sealer.seal(ContentType.application_data, bytes([i]) * i) for i in range(5)]
            self.assertEqual([opener.open(ContentType.application_data, r) for r in records], [bytes([i]) * i for i in range(5)])
            self.assertEqual((sealer.sequence_number, opener.sequence_number), (5, 5))

    def test_same_plaintext_twice_gives_different_ciphertexts(self) -> None:
        sealer = RecordSealer(Aead.AES_256_GCM, keys(Aead.AES_256_GCM))
        self.assertNotEqual(sealer.seal(ContentType.application_data, b"123456"), sealer.seal(ContentType.application_data, b"123456"))


class RefusalTests(unittest.SynchronousTestCase):
    aead = Aead.CHACHA20_POLY1305

    def pair(self) -> tuple[RecordSealer, RecordOpener]:
        return RecordSealer(self.aead, keys(self.aead)), RecordOpener(self.aead, keys(self.aead))

    def assertAlert(self, alert: Alert, f: object, *args: object) -> None:
        error = self.assertRaises(AlertError, f, *args)
        self.assertEqual(error.alert, alert)

    def test_every_flipped_bit_is_bad_record_mac(self) -> None:
        sealer, _ = self.pair()
        record = sealer.seal(ContentType.application_data, b"OTP 123456")
        for i in range(len(record)):
            tampered = bytearray(record)
            tampered[i] ^= 0x01
            _, opener = self.pair()
            self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, bytes(tampered))

    def test_truncated_and_extended_records_are_bad_record_mac(self) -> None:
        sealer, opener = self.pair()
        record = sealer.seal(ContentType.application_data, b"OTP 123456")
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record[:-1])
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record + b"\x00")
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record[:15])

    def test_relabelled_content_type_is_bad_record_mac(self) -> None:
        sealer, opener = self.pair()
        record = sealer.seal(ContentType.alert, b"\x00")
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record)

    def test_replayed_record_is_bad_record_mac(self) -> None:
        sealer, opener = self.pair()
        record = sealer.seal(ContentType.application_data, b"pay 100")
        self.assertEqual(opener.open(ContentType.application_data, record), b"pay 100")
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record)

    def test_reordered_records_are_bad_record_mac(self) -> None:
        sealer, opener = self.pair()
        first = sealer.seal(ContentType.application_data, b"first")
        second = sealer.seal(ContentType.application_data, b"second")
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, second)
        self.assertEqual(opener.open(ContentType.application_data, first), b"first")  # a failure never advances

    def test_record_under_other_keys_is_bad_record_mac(self) -> None:
        record = RecordSealer(self.aead, keys(self.aead, 0x01)).seal(ContentType.application_data, b"x")
        opener = RecordOpener(self.aead, keys(self.aead, 0x02))
        self.assertAlert(Alert.bad_record_mac, opener.open, ContentType.application_data, record)

    def test_oversize_record_is_record_overflow_before_any_decryption(self) -> None:
        _, opener = self.pair()
        self.assertAlert(Alert.record_overflow, opener.open, ContentType.application_data, bytes(MAX_PLAINTEXT + 17))
        self.assertEqual(opener.sequence_number, 0)

    def test_sealer_refuses_oversize_plaintext(self) -> None:
        sealer, _ = self.pair()
        self.assertRaises(ValueError, sealer.seal, ContentType.application_data, bytes(MAX_PLAINTEXT + 1))
        self.assertEqual(len(sealer.seal(ContentType.application_data, bytes(MAX_PLAINTEXT))), MAX_PLAINTEXT + 16)

    def test_sequence_limit_stops_both_directions_before_nonce_reuse(self) -> None:
        sealer = RecordSealer(self.aead, keys(self.aead), record_limit=2)
        opener = RecordOpener(self.aead, keys(self.aead), record_limit=2)
        for _ in range(2):
            opener.open(ContentType.application_data, sealer.seal(ContentType.application_data, b"x"))
        self.assertEqual(sealer.records_left, 0)
        self.assertAlert(Alert.internal_error, sealer.seal, ContentType.application_data, b"x")
        # A peer that keeps going past the limit (its third record) is refused too.
        rogue = RecordSealer(self.aead, keys(self.aead), record_limit=3)
        for _ in range(2):
            rogue.seal(ContentType.application_data, b"x")
        rogue_record = rogue.seal(ContentType.application_data, b"x")
        self.assertAlert(Alert.unexpected_message, opener.open, ContentType.application_data, rogue_record)

    def test_wrong_key_length_is_a_programming_error(self) -> None:
        self.assertRaises(ValueError, RecordSealer, Aead.AES_256_GCM, keys(Aead.AES_128_GCM))
