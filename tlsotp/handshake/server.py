"""The server's handshake state machine.

    WAIT_CLIENT_HELLO --ClientHello / send ServerHello, Certificate, CertificateVerify-->
        WAIT_KEY_TRANSPORT (RSA transport suites) --KeyTransport--> WAIT_CLIENT_CERTIFICATE
        WAIT_CLIENT_CERTIFICATE (ECDHE suites)
      --Certificate--> WAIT_CLIENT_CERTIFICATE_VERIFY
      --CertificateVerify--> WAIT_CLIENT_FINISHED
      --Finished / send Finished; emit HandshakeComplete--> CONNECTED
    any state --alert / refusal--> CLOSED (close_notify) or FAILED

The server chooses the suite by its own preference order among those the client offered and
its certificate key can authenticate; client authentication is mandatory.
"""

from __future__ import annotations

import enum

from cryptography.hazmat.primitives.asymmetric import rsa

from tlsotp.alerts import Alert, AlertError
from tlsotp.handshake.certificates import PeerKey, leaf_key, parse_chain, run_validator
from tlsotp.handshake.config import ServerConfig
from tlsotp.handshake.connection import ConnectionBase
from tlsotp.handshake.events import Event, HandshakeComplete
from tlsotp.handshake.key_exchange import (
    ecdh_shared_secret,
    encode_key_share,
    load_key_share,
    make_ephemeral_key,
    unwrap_secret,
)
from tlsotp.handshake.keyschedule import (
    HandshakeSecrets,
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
    KeyTransport,
    ServerHello,
)
from tlsotp.handshake.record import RecordOpener, RecordSealer
from tlsotp.handshake.signatures import CLIENT_CONTEXT, SERVER_CONTEXT, scheme_for, sign, signed_content, verify
from tlsotp.handshake.suites import Group, SignatureKind, Suite, suite_for_code


class ServerState(enum.Enum):
    # Members are singletons that compare by identity; an identity hash (C) agrees with that and
    # spares Enum.__hash__'s Python call on every dict and cache lookup keyed by a member.
    __hash__ = object.__hash__

    WAIT_CLIENT_HELLO = "WAIT_CLIENT_HELLO"
    WAIT_KEY_TRANSPORT = "WAIT_KEY_TRANSPORT"
    WAIT_CLIENT_CERTIFICATE = "WAIT_CLIENT_CERTIFICATE"
    WAIT_CLIENT_CERTIFICATE_VERIFY = "WAIT_CLIENT_CERTIFICATE_VERIFY"
    WAIT_CLIENT_FINISHED = "WAIT_CLIENT_FINISHED"
    CONNECTED = "CONNECTED"
    CLOSED = "CLOSED"
    FAILED = "FAILED"


_EXPECTED: dict[ServerState, HandshakeType] = {
    ServerState.WAIT_CLIENT_HELLO: HandshakeType.client_hello,
    ServerState.WAIT_KEY_TRANSPORT: HandshakeType.key_transport,
    ServerState.WAIT_CLIENT_CERTIFICATE: HandshakeType.certificate,
    ServerState.WAIT_CLIENT_CERTIFICATE_VERIFY: HandshakeType.certificate_verify,
    ServerState.WAIT_CLIENT_FINISHED: HandshakeType.finished,
}


#: The known groups by wire code (a dict lookup rather than Group(code)'s Python calls).
_GROUPS: dict[int, Group] = {g.value: g for g in Group}


def choose_suite(server_order: tuple[Suite, ...], offered_codes: tuple[int, ...]) -> Suite:
    """The first suite in the server's order that the client offered (unknown codes ignored)."""
    offered = set(offered_codes)
    for suite in server_order:
        if suite.code in offered:
            return suite
    raise AlertError(Alert.insufficient_security, "no cipher suite in common")


class ServerConnection(ConnectionBase[ServerState]):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(
            ServerState.WAIT_CLIENT_HELLO, ServerState.CLOSED, ServerState.FAILED, config.random_bytes, config.observer
        )
        self.config = config
        self._usable_suites = config.usable_suites
        self._hello_hash = b""
        self._secrets: HandshakeSecrets | None = None
        self._client_key: PeerKey | None = None
        self._client_kind: SignatureKind | None = None

    def _receive_handshake(self, msg_type: HandshakeType, body: bytes, raw: bytes, size: int) -> list[Event]:
        if _EXPECTED.get(self.state) is not msg_type:
            raise self._unexpected(msg_type)
        if msg_type is HandshakeType.client_hello:
            self._on_client_hello(ClientHello.decode_body(body), raw, size)
        elif msg_type is HandshakeType.key_transport:
            self._on_key_transport(KeyTransport.decode_body(body), raw, size)
        elif msg_type is HandshakeType.certificate:
            self._on_certificate(Certificate.decode_body(body), raw, size)
        elif msg_type is HandshakeType.certificate_verify:
            self._on_certificate_verify(CertificateVerify.decode_body(body), raw, size)
        else:
            return self._on_finished(Finished.decode_body(body), raw, size)
        return []

    def _on_client_hello(self, hello: ClientHello, raw: bytes, size: int) -> None:
        self._trace_received(hello, size)
        common_versions = set(hello.versions) & set(SUPPORTED_VERSIONS)
        if not common_versions:
            raise AlertError(Alert.protocol_version, f"client offers versions {list(hello.versions)}; we speak {list(SUPPORTED_VERSIONS)}")
        if len(set(hello.suites)) != len(hello.suites):
            raise AlertError(Alert.illegal_parameter, "cipher suite offered twice")
        shares = self._key_shares_by_group(hello)
        suite = choose_suite(self._usable_suites, hello.suites)
        server_share = b""
        shared_secret: bytes | None = None
        if suite.group is not None:
            if suite.group not in shares:
                raise AlertError(Alert.illegal_parameter, f"no {suite.group.name} key share for the offered {suite.name}")
            peer_share = load_key_share(suite.group, shares[suite.group])
            ephemeral = make_ephemeral_key(self.config.ephemeral_keys, suite.group)
            shared_secret = ecdh_shared_secret(ephemeral, peer_share)
            server_share = encode_key_share(ephemeral)
        self.suite = suite
        self._transcript.append(raw)
        self._send_handshake(ServerHello(max(common_versions), self._random(RANDOM_LENGTH), suite.code, server_share))
        self._hello_hash = self._transcript.digest(suite.hash)
        self._send_handshake(Certificate(self.config.encoded_chain))
        content = signed_content(SERVER_CONTEXT, self._transcript.digest(suite.hash))
        signature = sign(self.config.private_key, suite.hash, content)
        self._send_handshake(CertificateVerify(scheme_for(suite.authentication, suite.hash), signature))
        if shared_secret is not None:
            self._secrets = derive_handshake_secrets(suite.hash, shared_secret, self._hello_hash)
            self.state = ServerState.WAIT_CLIENT_CERTIFICATE
        else:
            self.state = ServerState.WAIT_KEY_TRANSPORT

    def _key_shares_by_group(self, hello: ClientHello) -> dict[Group, bytes]:
        """Known groups' shares; each at most once and only for groups the offered suites use."""
        offered_groups = {s.group for s in map(suite_for_code, hello.suites) if s is not None and s.group is not None}
        shares: dict[Group, bytes] = {}
        for share in hello.key_shares:
            group = _GROUPS.get(share.group)
            if group is None:
                continue  # a group from a future version: ignore, like unknown suites
            if group in shares:
                raise AlertError(Alert.illegal_parameter, f"two {group.name} key shares")
            if group not in offered_groups:
                raise AlertError(Alert.illegal_parameter, f"{group.name} key share but no offered suite uses it")
            shares[group] = share.key_exchange
        return shares

    def _on_key_transport(self, message: KeyTransport, raw: bytes, size: int) -> None:
        self._trace_received(message, size)
        suite = self._chosen()
        # Drawn before decrypting, used on any failure: success and failure take one path.
        replacement = self._random(TRANSPORTED_SECRET_LENGTH)
        key = self.config.private_key
        assert isinstance(key, rsa.RSAPrivateKey)  # only RSA keys can choose RSA transport suites
        secret = unwrap_secret(key, message.encrypted_secret, replacement)
        self._transcript.append(raw)
        self._secrets = derive_handshake_secrets(suite.hash, secret, self._hello_hash)
        self.state = ServerState.WAIT_CLIENT_CERTIFICATE

    def _on_certificate(self, message: Certificate, raw: bytes, size: int) -> None:
        self._trace_received(message, size)
        if not message.chain:
            raise AlertError(Alert.certificate_required, "client sent no certificate")
        chain = parse_chain(message.chain)
        run_validator(self.config.validate_peer, chain)
        self._client_key, self._client_kind = leaf_key(chain)
        self.peer_chain = chain
        self._transcript.append(raw)
        self.state = ServerState.WAIT_CLIENT_CERTIFICATE_VERIFY

    def _on_certificate_verify(self, message: CertificateVerify, raw: bytes, size: int) -> None:
        self._trace_received(message, size)
        suite = self._chosen()
        assert self._client_key is not None and self._client_kind is not None
        if message.scheme != scheme_for(self._client_kind, suite.hash):
            raise AlertError(Alert.illegal_parameter, f"client signed with scheme 0x{message.scheme:04x}, not its key's")
        content = signed_content(CLIENT_CONTEXT, self._transcript.digest(suite.hash))
        verify(self._client_key, suite.hash, message.signature, content, "client")
        self._transcript.append(raw)
        self.state = ServerState.WAIT_CLIENT_FINISHED

    def _on_finished(self, message: Finished, raw: bytes, size: int) -> list[Event]:
        self._trace_received(message, size)
        suite = self._chosen()
        secrets = self._secrets
        assert secrets is not None
        if len(message.verify_data) != suite.hash.digest_size:
            raise AlertError(Alert.decode_error, "client Finished has the wrong length")
        check_finished(
            suite.hash, secrets.client_finished_key, self._transcript.digest(suite.hash), message.verify_data, "client"
        )
        self._transcript.append(raw)
        application = derive_application_secrets(suite, secrets.master_secret, self._transcript.digest(suite.hash))
        self._opener = RecordOpener(suite.aead, application.client_keys)
        self._send_handshake(
            Finished(finished_mac(suite.hash, secrets.server_finished_key, self._transcript.digest(suite.hash)))
        )
        self._sealer = RecordSealer(suite.aead, application.server_keys)
        self._secrets = None
        self.handshake_complete = True
        self.state = ServerState.CONNECTED
        return [HandshakeComplete(suite, self.peer_chain)]

    def _chosen(self) -> Suite:
        if self.suite is None:
            raise AlertError(Alert.internal_error, "no suite chosen yet")
        return self.suite

    def _forget_secrets(self) -> None:
        self._secrets = None
