"""The cipher suite table, its parsing for --suites, and the key-type filter."""

from __future__ import annotations

from twisted.trial import unittest

from tests.vectors import fixtures
from tlsotp.handshake import ALL_SUITES, DEFAULT_SUITES, parse_suite_list, suite_named, suites_for_key
from tlsotp.handshake.suites import Aead, Group, HashAlgorithm, KeyExchange, SignatureKind, suite_for_code


class SuiteTableTests(unittest.SynchronousTestCase):
    def test_codes_and_names_are_unique(self) -> None:
        self.assertEqual(len({s.code for s in ALL_SUITES}), len(ALL_SUITES))
        self.assertEqual(len({s.name for s in ALL_SUITES}), len(ALL_SUITES))
        for suite in ALL_SUITES:
            self.assertTrue(0 < suite.code < 0x10000)
            self.assertIs(suite_for_code(suite.code), suite)

    def test_table_covers_every_component(self) -> None:
        ecdhe = [s for s in ALL_SUITES if s.key_exchange is KeyExchange.ECDHE]
        self.assertEqual({s.group for s in ecdhe}, set(Group))
        self.assertEqual({s.authentication for s in ecdhe}, set(SignatureKind))
        self.assertTrue(any(s.key_exchange is KeyExchange.RSA_OAEP for s in ALL_SUITES))
        self.assertEqual({s.aead for s in ALL_SUITES}, set(Aead))
        self.assertEqual({s.hash for s in ALL_SUITES}, set(HashAlgorithm))
        self.assertTrue(12 <= len(ALL_SUITES) <= 16)

    def test_names_spell_out_their_components(self) -> None:
        self.assertEqual(
            suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384").aead, Aead.AES_256_GCM
        )
        p256 = suite_named("TLSOTP_ECDHE_P256_RSA_PSS_WITH_AES_128_GCM_SHA256")
        self.assertEqual((p256.group, p256.authentication, p256.hash), (Group.P256, SignatureKind.RSA_PSS, HashAlgorithm.SHA256))
        rsa = suite_named("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384")
        self.assertEqual((rsa.key_exchange, rsa.group, rsa.authentication), (KeyExchange.RSA_OAEP, None, SignatureKind.RSA_PSS))
        for suite in ALL_SUITES:
            self.assertIn(suite.aead.value, suite.name)
            self.assertTrue(suite.name.endswith(suite.hash.value))
            if suite.group is not None:
                self.assertIn(f"_{suite.group.name}_{suite.authentication.value}_", suite.name)

    def test_defaults_put_forward_secret_suites_first(self) -> None:
        kinds = [s.key_exchange for s in DEFAULT_SUITES]
        first_rsa = kinds.index(KeyExchange.RSA_OAEP)
        self.assertTrue(all(k is KeyExchange.ECDHE for k in kinds[:first_rsa]))
        self.assertTrue(all(k is KeyExchange.RSA_OAEP for k in kinds[first_rsa:]))
        self.assertEqual(DEFAULT_SUITES[0].aead, Aead.AES_256_GCM)


class ParseSuiteListTests(unittest.SynchronousTestCase):
    def test_keeps_the_given_order(self) -> None:
        names = "TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256, TLSOTP_ECDHE_P384_ECDSA_WITH_AES_256_GCM_SHA384"
        self.assertEqual(
            [s.name for s in parse_suite_list(names)],
            ["TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256", "TLSOTP_ECDHE_P384_ECDSA_WITH_AES_256_GCM_SHA384"],
        )

    def test_unknown_name_is_a_clear_value_error(self) -> None:
        error = self.assertRaises(ValueError, parse_suite_list, "TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384,RC4_MD5")
        self.assertIn("'RC4_MD5'", str(error))
        self.assertIn("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384", str(error))  # lists what is known

    def test_empty_and_duplicate_lists_are_refused(self) -> None:
        self.assertRaises(ValueError, parse_suite_list, "")
        self.assertRaises(ValueError, parse_suite_list, "TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256,")
        self.assertRaises(
            ValueError, parse_suite_list, "TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256,TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256"
        )


class SuitesForKeyTests(unittest.SynchronousTestCase):
    def test_ec_keys_get_ecdsa_suites_only(self) -> None:
        for key_type in ("ec-p256", "ec-p384"):
            suites = suites_for_key(fixtures.certificate_key("server", key_type).public_key())
            self.assertEqual(suites, tuple(s for s in ALL_SUITES if s.authentication is SignatureKind.ECDSA))

    def test_rsa_keys_get_rsa_pss_and_transport_suites(self) -> None:
        suites = suites_for_key(fixtures.certificate_key("server", "rsa-2048").public_key())
        self.assertEqual(suites, tuple(s for s in ALL_SUITES if s.authentication is SignatureKind.RSA_PSS))
        self.assertTrue(any(s.key_exchange is KeyExchange.RSA_OAEP for s in suites))

    def test_filter_keeps_the_callers_order(self) -> None:
        chosen = parse_suite_list(
            "TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256,TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256,"
            "TLSOTP_ECDHE_X25519_RSA_PSS_WITH_AES_256_GCM_SHA384"
        )
        rsa_key = fixtures.certificate_key("server", "rsa-2048").public_key()
        self.assertEqual([s.code for s in suites_for_key(rsa_key, chosen)], [0x2003, 0x1101])

    def test_unusable_keys_get_nothing(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        self.assertEqual(suites_for_key(ed25519.Ed25519PrivateKey.generate().public_key()), ())
        self.assertEqual(suites_for_key(ec.generate_private_key(ec.SECP521R1()).public_key()), ())


class DocumentationTests(unittest.SynchronousTestCase):
    def test_protocol_document_lists_every_suite_with_its_code(self) -> None:
        from pathlib import Path

        doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.rst").read_text()
        rows = {line.split()[1]: line.split()[0] for line in doc.splitlines() if line.startswith("0x") and "TLSOTP_" in line}
        self.assertEqual(rows, {s.name: f"0x{s.code:04x}" for s in ALL_SUITES})


class IdentityHashTests(unittest.SynchronousTestCase):
    """The handshake's plain enums hash by identity (C), not by Enum.__hash__'s Python call:
    consistent with their equality (identity), and every lookup keyed by a member still works."""

    def test_members_hash_by_identity_and_still_key_dicts_and_caches(self) -> None:
        import functools

        from tlsotp.handshake.client import ClientState
        from tlsotp.handshake.server import ServerState

        for enum_class in (ClientState, ServerState, KeyExchange, SignatureKind, Aead, HashAlgorithm):
            members = list(enum_class)
            table = {m: i for i, m in enumerate(members)}
            cached = functools.cache(lambda m: m.name)
            for i, member in enumerate(members):
                self.assertEqual(hash(member), object.__hash__(member))
                self.assertEqual(table[member], i)
                self.assertIs(enum_class(member.value), member)
                self.assertEqual(cached(member), member.name)
            self.assertEqual(len(set(members)), len(members))


class ConfigSignatureKindTests(unittest.SynchronousTestCase):
    def test_the_configured_key_s_signature_kind_is_asked_once_and_is_the_key_s(self) -> None:
        from tests.vectors.harness import make_configs
        from tlsotp.handshake.suites import signature_kind_for_key

        for key_type, kind in (("ec-p256", SignatureKind.ECDSA), ("rsa-2048", SignatureKind.RSA_PSS)):
            client, server = make_configs(ALL_SUITES[0], client_key=key_type)
            self.assertIs(client.signature_kind, kind)
            self.assertIs(client.signature_kind, signature_kind_for_key(client.private_key.public_key()))
            self.assertIn("signature_kind", vars(client))  # computed once, kept on the configuration
            self.assertIs(server.signature_kind, SignatureKind.ECDSA)
