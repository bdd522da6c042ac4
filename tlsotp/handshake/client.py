"""The client's handshake state machine.

    START --initiate--> WAIT_SERVER_HELLO --ServerHello--> WAIT_SERVER_CERTIFICATE
      --Certificate--> WAIT_SERVER_CERTIFICATE_VERIFY
      --CertificateVerify / send [KeyTransport], Certificate, [CertificateVerify], Finished;
        emit HandshakeComplete--> WAIT_SERVER_FINISHED
      --Finished--> CONNECTED
    any state --alert / refusal--> CLOSED (close_notify) or FAILED

The client may send application data from WAIT_SERVER_FINISHED on (the server has already
proven its identity with its signature, and only it can derive the keys), but it accepts the
server's application data only in CONNECTED, after the server's Finished has verified.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import rsa

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.certificates import PeerKey, leaf_key, parse_chain, run_validator
from tlsotp.handshake.config import ClientConfig
from tlsotp.handshake.connection import ConnectionBase, ConnectionStateError
from tlsotp.handshake.events import Event, HandshakeComplete
from tlsotp.handshake.key_exchange import (
    EphemeralPrivateKey,
    ecdh_shared_secret,
    encode_key_share,
    load_key_share,
    make_ephemeral_key,
    wrap_secret,
)
from tlsotp.handshake.keyschedule import (
    HandshakeSecrets,
    TrafficKeys,
    check_finished,
    derive_application_secrets,
    derive_handshake_secrets,
    finished_mac,
)
from tlsotp.handshake.limits import RANDOM_LENGTH, SUPPORTED_VERSIONS, TRANSPORTED_SECRET_LENGTH
from tlsotp.handshake.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    HandshakeType,
    KeyShare,
    KeyTransport,
    ServerHello,
)
from tlsotp.handshake.record import RecordOpener, RecordSealer
from tlsotp.handshake.signatures import CLIENT_CONTEXT, SERVER_CONTEXT, scheme_for, sign, signed_content, verify
from tlsotp.handshake.suites import Group, KeyExchange, Suite, groups_of


class ClientState(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    START = "START"
    WAIT_SERVER_HELLO = "WAIT_SERVER_HELLO"
    WAIT_SERVER_CERTIFICATE = "WAIT_SERVER_CERTIFICATE"
    WAIT_SERVER_CERTIFICATE_VERIFY = "WAIT_SERVER_CERTIFICATE_VERIFY"
    WAIT_SERVER_FINISHED = "WAIT_SERVER_FINISHED"
    CONNECTED = "CONNECTED"
    CLOSED = "CLOSED"
    FAILED = "FAILED"


_EXPECTED: dict[ClientState, HandshakeType] = {
    ClientState.WAIT_SERVER_HELLO: HandshakeType.server_hello,
    ClientState.WAIT_SERVER_CERTIFICATE: HandshakeType.certificate,
    ClientState.WAIT_SERVER_CERTIFICATE_VERIFY: HandshakeType.certificate_verify,
    ClientState.WAIT_SERVER_FINISHED: HandshakeType.finished,
}


class ClientConnection(ConnectionBase[ClientState]):
    def __init__(self, config: ClientConfig) -> None:
        super().__init__(ClientState.START, ClientState.CLOSED, ClientState.FAILED, config.random_bytes, config.observer)
        self.config = config
        self._ephemeral: dict[Group, EphemeralPrivateKey] = {}
        self._shared_secret: bytes | None = None
        self._hello_hash = b""
        self._server_key: PeerKey | None = None
        self._secrets: HandshakeSecrets | None = None
        self._server_keys: TrafficKeys | None = None
        self._offered_versions: tuple[int, ...] = ()

    def initiate(self) -> None:
        """Queue the ClientHello: offered versions, suites in preference order, one key share
        per ECDHE group among those suites."""
        if self.state is not ClientState.START:
            raise ConnectionStateError(f"initiate() in state {self.state.name}")
        random = self._random(RANDOM_LENGTH)
        suites = tuple(self.config.suites)
        self._ephemeral = {g: make_ephemeral_key(self.config.ephemeral_keys, g) for g in groups_of(suites)}
        hello = ClientHello(
            versions=SUPPORTED_VERSIONS,
            random=random,
            suites=tuple(s.code for s in suites),
            key_shares=tuple(KeyShare(g, encode_key_share(k)) for g, k in self._ephemeral.items()),
        )
        self._send_handshake(hello)
        self._offered_versions = hello.versions
        self.state = ClientState.WAIT_SERVER_HELLO

    def _receive_handshake(self, msg_type: HandshakeType, body: bytes, raw: bytes, size: int) -> list[Event]:
        if _EXPECTED.get(self.state) is not msg_type:
            raise self._unexpected(msg_type)
        if msg_type is HandshakeType.server_hello:
            self._on_server_hello(ServerHello.decode_body(body), raw, size)
            return []
        if msg_type is HandshakeType.certificate:
            self._on_certificate(Certificate.decode_body(body), raw, size)
            return []
        if msg_type is HandshakeType.certificate_verify:
            return self._on_certificate_verify(CertificateVerify.decode_body(body), raw, size)
        self._on_finished(Finished.decode_body(body), raw, size)
        return []

    def _on_server_hello(self, hello: ServerHello, raw: bytes, size: int) -> None:
        self._trace_received(hello, size)
        if hello.version not in self._offered_versions:
            raise AlertError(Alert.illegal_parameter, f"server chose version {hello.version}, which we did not offer")
        suite = next((s for s in self.config.suites if s.code == hello.suite), None)
        if suite is None:
            raise AlertError(Alert.illegal_parameter, f"server chose suite 0x{hello.suite:04x}, which we did not offer")
        if suite.group is not None:
            peer_share = load_key_share(suite.group, hello.key_share)
            self._shared_secret = ecdh_shared_secret(self._ephemeral[suite.group], peer_share)
        elif hello.key_share:
            raise AlertError(Alert.illegal_parameter, "key share in a ServerHello for an RSA transport suite")
        self._ephemeral = {}
        self.suite = suite
        self._transcript.append(raw)
        self._hello_hash = self._transcript.digest(suite.hash)
        self.state = ClientState.WAIT_SERVER_CERTIFICATE

    def _on_certificate(self, message: Certificate, raw: bytes, size: int) -> None:
        self._trace_received(message, size)
        suite = self._chosen()
        if not message.chain:
            raise AlertError(Alert.decode_error, "server sent an empty certificate chain")
        chain = parse_chain(message.chain)
        run_validator(self.config.validate_peer, chain)
        key, kind = leaf_key(chain)
        if kind is not suite.authentication:
            raise AlertError(
                Alert.unsupported_certificate, f"server certificate key ({kind.value}) cannot authenticate {suite.name}"
            )
        self._server_key = key
        self.peer_chain = chain
        self._transcript.append(raw)
        self.state = ClientState.WAIT_SERVER_CERTIFICATE_VERIFY

    def _on_certificate_verify(self, message: CertificateVerify, raw: bytes, size: int) -> list[Event]:
        self._trace_received(message, size)
        suite = self._chosen()
        assert self._server_key is not None
        if message.scheme != scheme_for(suite.authentication, suite.hash):
            raise AlertError(Alert.illegal_parameter, f"server signed with scheme 0x{message.scheme:04x}, not the suite's")
        content = signed_content(SERVER_CONTEXT, self._transcript.digest(suite.hash))
        verify(self._server_key, suite.hash, message.signature, content, "server")
        self._transcript.append(raw)
        self._send_flight(suite)
        self.handshake_complete = True
        self.state = ClientState.WAIT_SERVER_FINISHED
        return [HandshakeComplete(suite, self.peer_chain)]

    def _send_flight(self, suite: Suite) -> None:
        """[KeyTransport], Certificate, [CertificateVerify], Finished; then switch to app keys."""
        if suite.key_exchange is KeyExchange.RSA_OAEP:
            secret = self._random(TRANSPORTED_SECRET_LENGTH)
            assert isinstance(self._server_key, rsa.RSAPublicKey)  # checked against the suite
            self._send_handshake(KeyTransport(wrap_secret(self._server_key, secret)))
            self._shared_secret = secret
        assert self._shared_secret is not None
        secrets = derive_handshake_secrets(suite.hash, self._shared_secret, self._hello_hash)
        self._shared_secret = None
        chain = self.config.certificate_chain
        self._send_handshake(Certificate(self.config.encoded_chain))
        if chain:
            kind = self.config.signature_kind
            assert kind is not None  # checked by ClientConfig
            content = signed_content(CLIENT_CONTEXT, self._transcript.digest(suite.hash))
            signature = sign(self.config.private_key, suite.hash, content)
            self._send_handshake(CertificateVerify(scheme_for(kind, suite.hash), signature))
        verify_data = finished_mac(suite.hash, secrets.client_finished_key, self._transcript.digest(suite.hash))
        self._send_handshake(Finished(verify_data))
        application = derive_application_secrets(suite, secrets.master_secret, self._transcript.digest(suite.hash))
        self._sealer = RecordSealer(suite.aead, application.client_keys)
        self._server_keys = application.server_keys
        self._secrets = secrets

    def _on_finished(self, message: Finished, raw: bytes, size: int) -> None:
        self._trace_received(message, size)
        suite = self._chosen()
        assert self._secrets is not None and self._server_keys is not None
        if len(message.verify_data) != suite.hash.digest_size:
            raise AlertError(Alert.decode_error, "server Finished has the wrong length")
        check_finished(
            suite.hash, self._secrets.server_finished_key, self._transcript.digest(suite.hash), message.verify_data, "server"
        )
        self._transcript.append(raw)
        self._opener = RecordOpener(suite.aead, self._server_keys)
        self._secrets = None
        self._server_keys = None
        self.state = ClientState.CONNECTED

    def _chosen(self) -> Suite:
        if self.suite is None:
            raise AlertError(Alert.internal_error, "no suite chosen yet")
        return self.suite

    def _forget_secrets(self) -> None:
        self._ephemeral = {}
        self._shared_secret = None
        self._secrets = None
        self._server_keys = None
