"""The handshake and record layer: sans-I/O state machines, no reactor.

Bytes and events in, bytes and events out: the Twisted shell feeds each received frame to
``receive_frame``, reacts to the returned events, and writes ``frames_to_send()`` as
netstrings. Everything here is deterministic given its configuration, which is what lets the
tests pump two connections against each other in memory and replay published test vectors.
"""

from tlsotp.handshake.client import ClientConnection, ClientState
from tlsotp.handshake.config import ClientConfig, Observer, PeerValidator, ServerConfig, SigningKey
from tlsotp.handshake.connection import ConnectionStateError
from tlsotp.handshake.events import (
    AlertReceived,
    ApplicationData,
    ConnectionFailed,
    Event,
    HandshakeComplete,
    PeerClosed,
    TraceRecord,
)
from tlsotp.handshake.key_exchange import EphemeralKeyFactory, EphemeralPrivateKey, generate_ephemeral_key
from tlsotp.handshake.limits import MAX_FRAME, MAX_PLAINTEXT, SUPPORTED_VERSIONS
from tlsotp.handshake.server import ServerConnection, ServerState
from tlsotp.handshake.suites import (
    ALL_SUITES,
    DEFAULT_SUITES,
    Aead,
    Group,
    HashAlgorithm,
    KeyExchange,
    SignatureKind,
    Suite,
    parse_suite_list,
    suite_named,
    suites_for_key,
)

__all__ = [
    "ALL_SUITES",
    "DEFAULT_SUITES",
    "MAX_FRAME",
    "MAX_PLAINTEXT",
    "SUPPORTED_VERSIONS",
    "Aead",
    "AlertReceived",
    "ApplicationData",
    "ClientConfig",
    "ClientConnection",
    "ClientState",
    "ConnectionFailed",
    "ConnectionStateError",
    "EphemeralKeyFactory",
    "EphemeralPrivateKey",
    "Event",
    "Group",
    "HandshakeComplete",
    "HashAlgorithm",
    "KeyExchange",
    "Observer",
    "PeerClosed",
    "PeerValidator",
    "ServerConfig",
    "ServerConnection",
    "ServerState",
    "SignatureKind",
    "SigningKey",
    "Suite",
    "TraceRecord",
    "generate_ephemeral_key",
    "parse_suite_list",
    "suite_named",
    "suites_for_key",
]
