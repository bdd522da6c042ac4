"""Running a client and a server against each other in memory, frame by frame.

``Pair`` holds both connections and everything that crossed between them, so tests can let
the handshake run, stop it at a chosen state, or replace a frame in flight (a man in the
middle) via the ``tamper`` hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.vectors import fixtures
from tlsotp.handshake import (
    ApplicationData,
    ClientConfig,
    ClientConnection,
    Event,
    HandshakeComplete,
    ServerConfig,
    ServerConnection,
    Suite,
    TraceRecord,
    generate_ephemeral_key,
)
from tlsotp.handshake.frames import ContentType, encode_frame, split_frame
from tlsotp.handshake.messages import (
    Certificate,
    CertificateVerify,
    ClientHello,
    Finished,
    HandshakeMessage,
    HandshakeType,
    KeyTransport,
    ServerHello,
    encode_handshake,
    split_handshake,
)

#: (direction "c2s"/"s2c", frame) -> replacement frame, or None to drop it.
Tamper = Callable[[str, bytes], "bytes | None"]


@dataclass
class Pair:
    client: ClientConnection
    server: ServerConnection
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    flights: int = 0
    tamper: Tamper | None = None

    def pump(self) -> None:
        """Deliver queued frames both ways until neither side has anything to send."""
        while True:
            moved = self._deliver("c2s") + self._deliver("s2c")
            if not moved:
                return

    def _deliver(self, direction: str) -> int:
        sender, receiver, events = (
            (self.client, self.server, self.server_events)
            if direction == "c2s"
            else (self.server, self.client, self.client_events)
        )
        frames = sender.frames_to_send()
        if frames:
            self.flights += 1
        for frame in frames:
            if self.tamper is not None:
                replaced = self.tamper(direction, frame)
                if replaced is None:
                    continue
                frame = replaced
            self.wire.append((direction, frame))
            events.extend(receiver.receive_frame(frame))
        return len(frames)

    def run_session(self, request: bytes, answer: bytes) -> None:
        """The flow of docs/protocol.rst, frame by frame: the client queues ``request`` as soon
        as the server's CertificateVerify has verified (so it rides in the client's second
        flight, after its Finished); the server, once it has the request, queues ``answer``
        and close_notify after its Finished; the client answers close_notify with its own."""
        self.client.initiate()
        requested = answered = False
        while True:
            moved = self._deliver("c2s")
            if not answered and ApplicationData(request) in self.server_events:
                self.server.send_application_data(answer)
                self.server.close()
                answered = True
            moved += self._deliver("s2c")
            if not requested and any(isinstance(e, HandshakeComplete) for e in self.client_events):
                self.client.send_application_data(request)
                requested = True
            if not moved:
                return

    def bytes_sent(self, direction: str) -> int:
        return sum(len(f) for d, f in self.wire if d == direction)


def make_configs(
    suite_or_suites: Suite | tuple[Suite, ...],
    *,
    server_key: str = "ec-p256",
    client_key: str = "ec-p256",
    server_suites: tuple[Suite, ...] | None = None,
    client_observer: Callable[[TraceRecord], None] | None = None,
    server_observer: Callable[[TraceRecord], None] | None = None,
    deterministic: bool = True,
) -> tuple[ClientConfig, ServerConfig]:
    client_suites = suite_or_suites if isinstance(suite_or_suites, tuple) else (suite_or_suites,)
    client_id = fixtures.identity("client", client_key)
    server_id = fixtures.identity("server", server_key)
    client = ClientConfig(
        certificate_chain=client_id.chain,
        private_key=client_id.key,
        validate_peer=fixtures.server_verifier(),
        suites=client_suites,
        random_bytes=fixtures.ScriptedRandom("client") if deterministic else os.urandom,
        ephemeral_keys=fixtures.fixed_ephemeral_keys("client") if deterministic else generate_ephemeral_key,
        observer=client_observer,
    )
    server = ServerConfig(
        certificate_chain=server_id.chain,
        private_key=server_id.key,
        validate_peer=fixtures.client_verifier(),
        suites=server_suites if server_suites is not None else client_suites,
        random_bytes=fixtures.ScriptedRandom("server") if deterministic else os.urandom,
        ephemeral_keys=fixtures.fixed_ephemeral_keys("server") if deterministic else generate_ephemeral_key,
        observer=server_observer,
    )
    return client, server


def connect(client_config: ClientConfig, server_config: ServerConfig, tamper: Tamper | None = None) -> Pair:
    """Initiate and pump to quiescence: a finished handshake, or a failure on some side."""
    pair = Pair(ClientConnection(client_config), ServerConnection(server_config), tamper=tamper)
    pair.client.initiate()
    pair.pump()
    return pair


def key_type_for(suite: Suite) -> str:
    """A server certificate key type that can authenticate the suite."""
    return "ec-p256" if suite.authentication.value == "ECDSA" else "rsa-2048"


def handshake_frame(message: HandshakeMessage) -> bytes:
    """The frame a well-behaved peer would send for this message."""
    return encode_frame(ContentType.handshake, encode_handshake(message))


def parse_handshake_frame(frame: bytes) -> HandshakeMessage:
    """Decode a captured handshake frame back into its message (for men in the middle)."""
    content_type, body = split_frame(frame)
    assert content_type is ContentType.handshake, content_type
    msg_type, msg_body = split_handshake(body)
    decoder: dict[HandshakeType, Callable[[bytes], HandshakeMessage]] = {
        HandshakeType.client_hello: ClientHello.decode_body,
        HandshakeType.server_hello: ServerHello.decode_body,
        HandshakeType.certificate: Certificate.decode_body,
        HandshakeType.certificate_verify: CertificateVerify.decode_body,
        HandshakeType.key_transport: KeyTransport.decode_body,
        HandshakeType.finished: Finished.decode_body,
    }
    return decoder[msg_type](msg_body)


def handshake_type(frame: bytes) -> HandshakeType | None:
    """The handshake message type of a frame, or None for alerts and application data."""
    if frame[:1] != bytes([ContentType.handshake]):
        return None
    return HandshakeType(frame[1])


def rewrite(direction: str, kind: type, change: Callable[[Any], HandshakeMessage]) -> Tamper:
    """A man in the middle that rewrites the first message of one type going one way."""
    done = False

    def tamper(d: str, frame: bytes) -> bytes | None:
        nonlocal done
        if done or d != direction or handshake_type(frame) is None:
            return frame
        message = parse_handshake_frame(frame)
        if not isinstance(message, kind):
            return frame
        done = True
        return handshake_frame(change(message))

    return tamper
