"""Complete handshakes between the real client and server machines, in memory."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from tests.vectors import fixtures
from tests.vectors.harness import connect, key_type_for, make_configs
from tlsotp.alerts import Alert
from tlsotp.handshake import (
    ALL_SUITES,
    MAX_PLAINTEXT,
    AlertReceived,
    ApplicationData,
    ClientConfig,
    ClientConnection,
    ClientState,
    ConnectionFailed,
    ConnectionStateError,
    Event,
    HandshakeComplete,
    KeyExchange,
    PeerClosed,
    ServerConfig,
    ServerConnection,
    ServerState,
    TraceRecord,
    parse_suite_list,
    suite_named,
)
from tlsotp.handshake.frames import ContentType
from tlsotp.handshake.key_exchange import ecdh_shared_secret
from tlsotp.handshake.suites import Group

OTP_REQUEST = b'{"request": "otp", "account": "alice"}'
OTP = b'{"otp": "492817", "expires_in": 60}'


class EverySuiteTests(unittest.SynchronousTestCase):
    def test_every_suite_completes_and_carries_data_both_ways(self) -> None:
        for suite in ALL_SUITES:
            for client_key in ("ec-p256", "rsa-2048"):
                client_config, server_config = make_configs(suite, server_key=key_type_for(suite), client_key=client_key)
                pair = connect(client_config, server_config)
                label = f"{suite.name} with a {client_key} client"
                self.assertEqual(pair.client.state, ClientState.CONNECTED, label)
                self.assertEqual(pair.server.state, ServerState.CONNECTED, label)
                self.assertEqual(pair.client.suite, suite)
                self.assertEqual(pair.server.suite, suite)
                self.assertEqual(pair.client_events, [HandshakeComplete(suite, fixtures.identity("server", key_type_for(suite)).chain)])
                self.assertEqual(pair.server_events, [HandshakeComplete(suite, fixtures.identity("client", client_key).chain)])
                self.assertEqual(pair.client.peer_chain, fixtures.identity("server", key_type_for(suite)).chain)
                pair.client.send_application_data(OTP_REQUEST)
                pair.pump()
                pair.server.send_application_data(OTP)
                pair.pump()
                self.assertEqual(pair.server_events[-1], ApplicationData(OTP_REQUEST), label)
                self.assertEqual(pair.client_events[-1], ApplicationData(OTP), label)
                # Application data is protected: the plaintext never crosses the wire.
                self.assertFalse(any(OTP in frame or OTP_REQUEST in frame for _, frame in pair.wire))

    def test_p384_certificates_work_too(self) -> None:
        suite = suite_named("TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256")
        pair = connect(*make_configs(suite, server_key="ec-p384", client_key="ec-p384"))
        self.assertTrue(pair.client.handshake_complete and pair.server.handshake_complete)


class FlowTests(unittest.SynchronousTestCase):
    def run_otp_exchange(self, suite_name: str) -> tuple[int, list[list[str]]]:
        """Let each side react as the OTP application would; return the flights until the
        client holds the OTP, and the frame kinds in each flight."""
        suite = suite_named(suite_name)
        client_config, server_config = make_configs(suite, server_key=key_type_for(suite))
        client, server = ClientConnection(client_config), ServerConnection(server_config)
        client.initiate()
        flights: list[list[str]] = []
        sender: ClientConnection | ServerConnection = client
        receiver: ClientConnection | ServerConnection = server
        for _ in range(10):
            frames = sender.frames_to_send()
            self.assertTrue(frames, "protocol stalled")
            flights.append([f"{ContentType(f[0]).name}:{f[1] if f[0] == 22 else ''}" for f in frames])
            for frame in frames:
                for event in receiver.receive_frame(frame):
                    if isinstance(event, HandshakeComplete) and receiver is client:
                        client.send_application_data(OTP_REQUEST)
                    elif isinstance(event, ApplicationData) and receiver is server:
                        server.send_application_data(OTP)
                    elif isinstance(event, ApplicationData) and receiver is client:
                        self.assertEqual(event.data, OTP)
                        return len(flights), flights
            sender, receiver = receiver, sender
        self.fail("no OTP after 10 flights")

    def test_two_round_trips_to_the_otp_with_ecdhe(self) -> None:
        count, flights = self.run_otp_exchange("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384")
        self.assertEqual(count, 4)  # C->S, S->C, C->S, S->C
        self.assertEqual(flights[0], ["handshake:1"])
        self.assertEqual(flights[1], ["handshake:2", "handshake:11", "handshake:15"])
        self.assertEqual(flights[2], ["handshake:11", "handshake:15", "handshake:20", "application_data:"])
        self.assertEqual(flights[3], ["handshake:20", "application_data:"])

    def test_two_round_trips_to_the_otp_with_rsa_transport(self) -> None:
        count, flights = self.run_otp_exchange("TLSOTP_RSA_OAEP_WITH_AES_256_GCM_SHA384")
        self.assertEqual(count, 4)
        self.assertEqual(flights[2], ["handshake:16", "handshake:11", "handshake:15", "handshake:20", "application_data:"])

    def test_client_may_send_before_the_server_finished_but_not_receive(self) -> None:
        suite = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
        client_config, server_config = make_configs(suite)
        client, server = ClientConnection(client_config), ServerConnection(server_config)
        client.initiate()
        for frame in client.frames_to_send():
            server.receive_frame(frame)
        events: list[Event] = []
        for frame in server.frames_to_send():
            events += client.receive_frame(frame)
        self.assertEqual([type(e) for e in events], [HandshakeComplete])
        self.assertTrue(client.handshake_complete)
        self.assertEqual(client.state, ClientState.WAIT_SERVER_FINISHED)
        self.assertFalse(server.handshake_complete)
        client.send_application_data(OTP_REQUEST)  # allowed: the server proved its identity

    def test_server_chooses_by_its_own_order(self) -> None:
        client_order = parse_suite_list(
            "TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256,TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384,"
            "TLSOTP_ECDHE_X25519_RSA_PSS_WITH_AES_256_GCM_SHA384"
        )
        server_order = parse_suite_list(
            "TLSOTP_ECDHE_X25519_RSA_PSS_WITH_AES_256_GCM_SHA384,TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384,"
            "TLSOTP_ECDHE_P256_ECDSA_WITH_AES_128_GCM_SHA256"
        )
        # The server's first choice needs an RSA certificate; its key is EC, so it takes its second.
        pair = connect(*make_configs(client_order, server_suites=server_order))
        self.assertEqual(pair.server.suite, server_order[1])
        self.assertEqual(pair.client.suite, server_order[1])

    def test_default_configuration_prefers_forward_secrecy(self) -> None:
        for key_type in ("ec-p256", "rsa-2048"):
            client_id, server_id = fixtures.identity("client", "ec-p256"), fixtures.identity("server", key_type)
            pair = connect(
                ClientConfig(client_id.chain, client_id.key, fixtures.server_verifier()),
                ServerConfig(server_id.chain, server_id.key, fixtures.client_verifier()),
            )
            assert pair.server.suite is not None
            rsa_first = suite_named("TLSOTP_ECDHE_X25519_RSA_PSS_WITH_AES_256_GCM_SHA384")
            self.assertEqual(pair.server.suite, ALL_SUITES[0] if key_type == "ec-p256" else rsa_first)
            self.assertIs(pair.server.suite.key_exchange, KeyExchange.ECDHE)

    def test_long_writes_are_split_into_bounded_records(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        data = bytes(range(256)) * ((2 * MAX_PLAINTEXT + 100) // 256 + 1)
        pair.client.send_application_data(data)
        frames = pair.client.frames_to_send()
        self.assertEqual(len(frames), 3)
        self.assertTrue(all(len(f) <= 1 + MAX_PLAINTEXT + 16 for f in frames))
        received = b"".join(e.data for f in frames for e in pair.server.receive_frame(f) if isinstance(e, ApplicationData))
        self.assertEqual(received, data)

    def test_each_record_of_a_split_write_is_traced_with_its_own_sequence_number(self) -> None:
        """The trace fields are built lazily, per record: each binds its own sequence number."""
        records: list[TraceRecord] = []
        pair = connect(*make_configs(ALL_SUITES[0], client_observer=records.append))
        del records[:]
        pair.client.send_application_data(bytes(2 * MAX_PLAINTEXT + 100))
        frames = pair.client.frames_to_send()
        self.assertEqual(
            [(r.kind, r.size, r.fields) for r in records],
            [
                ("ApplicationData", len(f), {"sequence_number": str(i), "ciphertext_length": str(len(f) - 1)})
                for i, f in enumerate(frames)
            ],
        )
        self.assertEqual([len(f) - 1 for f in frames], [MAX_PLAINTEXT + 16, MAX_PLAINTEXT + 16, 100 + 16])

    def test_record_limit_closes_before_a_nonce_could_repeat(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        sealer = pair.client._sealer
        assert sealer is not None
        sealer._limit = sealer.sequence_number + 2  # pretend 2^24 records went by
        pair.client.send_application_data(b"last record")
        self.assertRaises(ConnectionStateError, pair.client.send_application_data, b"one too many")
        self.assertEqual(pair.client.state, ClientState.CLOSED)
        pair.pump()
        # The final sequence number carried a protected close_notify, not data.
        self.assertEqual(pair.server_events[-2:], [ApplicationData(b"last record"), PeerClosed()])

    def test_empty_write_sends_nothing(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        pair.client.send_application_data(b"")
        self.assertEqual(pair.client.frames_to_send(), [])


class ClosingTests(unittest.SynchronousTestCase):
    def test_close_notify_is_answered_and_both_sides_end(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        pair.client.close()
        self.assertTrue(pair.client.closed)
        self.assertEqual(pair.client.state, ClientState.CLOSED)
        pair.pump()
        self.assertEqual(pair.server_events[-1], PeerClosed())
        self.assertEqual(pair.server.state, ServerState.CLOSED)
        # Both close_notify alerts were protected: 1 type byte + 1 alert byte + 16 tag bytes.
        alerts = [frame for _, frame in pair.wire if frame[0] == ContentType.alert]
        self.assertEqual([len(f) for f in alerts], [18, 18])

    def test_close_is_idempotent_and_ends_sending(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        pair.server.close()
        pair.server.close()
        self.assertEqual(len(pair.server.frames_to_send()), 1)
        self.assertRaises(ConnectionStateError, pair.server.send_application_data, b"late")

    def test_close_during_the_handshake_is_plain_close_notify(self) -> None:
        client_config, server_config = make_configs(ALL_SUITES[0])
        client = ClientConnection(client_config)
        client.initiate()
        client.frames_to_send()
        client.close()
        self.assertEqual(client.frames_to_send(), [bytes([ContentType.alert, Alert.close_notify])])

    def test_abort_tells_the_peer(self) -> None:
        pair = connect(*make_configs(ALL_SUITES[0]))
        events = pair.client.abort(Alert.user_canceled, "user pressed ^C")
        self.assertEqual(events, [ConnectionFailed(Alert.user_canceled, "user pressed ^C")])
        pair.pump()
        self.assertEqual(pair.server_events[-1], AlertReceived(Alert.user_canceled))
        self.assertEqual(pair.client.abort(Alert.internal_error, "again"), [])


class TraceTests(unittest.SynchronousTestCase):
    def test_trace_shows_every_message_and_no_secrets(self) -> None:
        client_records: list[TraceRecord] = []
        server_records: list[TraceRecord] = []
        suite = suite_named("TLSOTP_ECDHE_X25519_ECDSA_WITH_AES_256_GCM_SHA384")
        client_config, server_config = make_configs(
            suite, client_observer=client_records.append, server_observer=server_records.append
        )
        pair = connect(client_config, server_config)
        pair.client.send_application_data(OTP_REQUEST)
        pair.pump()
        self.assertEqual(
            [(r.direction, r.kind) for r in client_records],
            [
                ("send", "ClientHello"), ("recv", "ServerHello"), ("recv", "Certificate"), ("recv", "CertificateVerify"),
                ("send", "Certificate"), ("send", "CertificateVerify"), ("send", "Finished"), ("recv", "Finished"),
                ("send", "ApplicationData"),
            ],
        )
        self.assertEqual(len(server_records), len(client_records))
        hello = client_records[0].fields
        self.assertEqual(hello["offered_suites"], suite.name)
        self.assertEqual(len(hello["client_random"]), 64)
        self.assertEqual(client_records[1].fields["chosen_suite"], suite.name)
        self.assertIn("CN=bank.tlsotp.test", client_records[2].fields["subjects"])
        self.assertEqual(client_records[3].fields["signature_algorithm"], "ecdsa_sha384")
        self.assertEqual([r.size for r in client_records if r.direction == "send"][:1], [len(pair.wire[0][1])])

        # No private key, ephemeral key or shared secret appears anywhere in the trace.
        client_eph = fixtures.ephemeral_key("client", Group.X25519)
        server_eph = fixtures.ephemeral_key("server", Group.X25519)
        shared = ecdh_shared_secret(client_eph, server_eph.public_key())
        secrets = [
            shared.hex(),
            client_eph.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()).hex(),
            format(fixtures.certificate_key("client", "ec-p256").private_numbers().private_value, "x"),  # type: ignore[union-attr]
        ]
        text = repr(client_records + server_records)
        for secret in secrets:
            self.assertNotIn(secret[:24], text)
        self.assertNotIn(OTP_REQUEST.decode(), text)


class ConfigTests(unittest.SynchronousTestCase):
    def test_key_must_match_the_leaf(self) -> None:
        client_id = fixtures.identity("client", "ec-p256")
        other = fixtures.certificate_key("client", "ec-p384")
        self.assertRaises(ValueError, ClientConfig, client_id.chain, other, fixtures.server_verifier())

    def test_server_needs_a_chain_and_a_usable_suite(self) -> None:
        server_id = fixtures.identity("server", "ec-p256")
        self.assertRaises(ValueError, ServerConfig, (), server_id.key, fixtures.client_verifier())
        rsa_only = parse_suite_list("TLSOTP_RSA_OAEP_WITH_AES_128_GCM_SHA256")
        self.assertRaises(ValueError, ServerConfig, server_id.chain, server_id.key, fixtures.client_verifier(), rsa_only)

    def test_suite_lists_are_bounded_and_unique(self) -> None:
        client_id = fixtures.identity("client", "ec-p256")
        self.assertRaises(ValueError, ClientConfig, client_id.chain, client_id.key, fixtures.server_verifier(), ())
        twice = (ALL_SUITES[0], ALL_SUITES[0])
        self.assertRaises(ValueError, ClientConfig, client_id.chain, client_id.key, fixtures.server_verifier(), twice)

    def test_initiate_only_once(self) -> None:
        client = ClientConnection(make_configs(ALL_SUITES[0])[0])
        client.initiate()
        self.assertRaises(ConnectionStateError, client.initiate)

    def test_no_application_data_before_the_handshake(self) -> None:
        client_config, server_config = make_configs(ALL_SUITES[0])
        client, server = ClientConnection(client_config), ServerConnection(server_config)
        self.assertRaises(ConnectionStateError, client.send_application_data, b"x")
        self.assertRaises(ConnectionStateError, server.send_application_data, b"x")
        client.initiate()
        self.assertRaises(ConnectionStateError, client.send_application_data, b"x")
