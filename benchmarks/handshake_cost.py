"""What a tlsotp session costs, per cipher suite: bytes, frames, round trips and CPU.

    python benchmarks/handshake_cost.py [--rounds N] [--client-key ec-p256|rsa-2048] [--suites A,B]

Each round runs the real sans-I/O client and server against each other in memory, with real
randomness, fresh ephemeral keys and full certificate validation (PeerVerifier), driven the
way the OTP application drives them: the client sends an OTP-sized request as soon as it may,
the server answers with an OTP-sized record. CPU is ``time.process_time`` spent inside each
side's calls, so it includes key generation, ECDH/RSA, signatures, certificate validation and
record protection, and excludes sockets and the reactor. Bytes are netstring-framed payloads
as the Twisted shell sends them (TCP/IP headers not included).

Not a test: timings vary by machine and load and never decide pass or fail.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlsotp.handshake import (  # noqa: E402
    ALL_SUITES,
    ApplicationData,
    ClientConfig,
    ClientConnection,
    HandshakeComplete,
    ServerConfig,
    ServerConnection,
    SignatureKind,
    Suite,
    parse_suite_list,
)
from tlsotp.pki.builders import build_root, issue_certificate  # noqa: E402
from tlsotp.pki.keys import KeyType, PrivateKey, generate_private_key  # noqa: E402
from tlsotp.pki.roles import Role  # noqa: E402
from tlsotp.pki.verify import PeerVerifier  # noqa: E402

OTP_REQUEST = b'{"request": "otp", "account": "alice", "transaction": "0123456789abcdef"}'
OTP_RESPONSE = b'{"otp": "492817", "expires_in": 60, "transaction": "0123456789abcdef"}'
SERVER_NAME = "bank.example"

T = TypeVar("T")


def make_configs(client_key: KeyType) -> tuple[ClientConfig, dict[SignatureKind, ServerConfig]]:
    """A fresh root, an EC and an RSA server certificate, and one client certificate."""
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key = generate_private_key(KeyType.EC_P256)
    root = build_root(root_key, "benchmark root", days=1, now=now)

    def issue(key: PrivateKey, name: str, role: Role) -> tuple[x509.Certificate]:
        return (issue_certificate(root_key, root, key.public_key(), name=name, role=role, days=1, now=now),)

    key = generate_private_key(client_key)
    client = ClientConfig(
        issue(key, "alice.example", Role.CLIENT), key, PeerVerifier(root, Role.SERVER, expected_names=[SERVER_NAME])
    )
    servers = {}
    for kind, key_type in ((SignatureKind.ECDSA, KeyType.EC_P256), (SignatureKind.RSA_PSS, KeyType.RSA_2048)):
        key = generate_private_key(key_type)
        servers[kind] = ServerConfig(issue(key, SERVER_NAME, Role.SERVER), key, PeerVerifier(root, Role.CLIENT))
    return client, servers


@dataclass
class Cost:
    c2s_bytes: int = 0
    s2c_bytes: int = 0
    c2s_frames: int = 0
    s2c_frames: int = 0
    flights: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0


def netstring_size(payload: int) -> int:
    return len(str(payload)) + 2 + payload


def one_session(client_config: ClientConfig, server_config: ServerConfig) -> Cost:
    cost = Cost()

    def timed(side: str, call: Callable[[], T]) -> T:
        start = time.process_time()
        result = call()
        elapsed = time.process_time() - start
        if side == "client":
            cost.client_cpu += elapsed
        else:
            cost.server_cpu += elapsed
        return result

    client = timed("client", lambda: ClientConnection(client_config))
    server = timed("server", lambda: ServerConnection(server_config))
    timed("client", client.initiate)
    sides: dict[str, ClientConnection | ServerConnection] = {"client": client, "server": server}
    sender, receiver = "client", "server"
    got_otp = False
    while not got_otp:
        frames = timed(sender, sides[sender].frames_to_send)
        if not frames:
            raise RuntimeError(f"session stalled before the OTP arrived ({sender} had nothing to send)")
        cost.flights += 1
        for frame in frames:
            size = netstring_size(len(frame))
            if sender == "client":
                cost.c2s_bytes += size
                cost.c2s_frames += 1
            else:
                cost.s2c_bytes += size
                cost.s2c_frames += 1
            for event in timed(receiver, lambda: sides[receiver].receive_frame(frame)):
                if isinstance(event, HandshakeComplete) and receiver == "client":
                    timed("client", lambda: client.send_application_data(OTP_REQUEST))
                elif isinstance(event, ApplicationData) and receiver == "server":
                    timed("server", lambda: server.send_application_data(OTP_RESPONSE))
                elif isinstance(event, ApplicationData) and receiver == "client":
                    got_otp = True
                elif not isinstance(event, (HandshakeComplete, ApplicationData)):
                    raise RuntimeError(f"session failed: {event}")
        sender, receiver = receiver, sender
    return cost


def run(suites: Sequence[Suite], rounds: int, client_key: KeyType, offer_all: bool) -> list[tuple[Suite, Cost, float, float]]:
    base_client, servers = make_configs(client_key)
    rows = []
    for suite in suites:
        offer = ALL_SUITES if offer_all else (suite,)
        client_config = ClientConfig(base_client.certificate_chain, base_client.private_key, base_client.validate_peer, suites=offer)
        base_server = servers[suite.authentication]
        server_config = ServerConfig(base_server.certificate_chain, base_server.private_key, base_server.validate_peer, suites=(suite,))
        one_session(client_config, server_config)  # warm-up
        costs = [one_session(client_config, server_config) for _ in range(rounds)]
        rows.append(
            (
                suite,
                costs[0],
                statistics.median(c.client_cpu for c in costs) * 1000,
                statistics.median(c.server_cpu for c in costs) * 1000,
            )
        )
    return rows


def render(rows: list[tuple[Suite, Cost, float, float]]) -> str:
    header = ("suite", "C->S bytes", "S->C bytes", "frames C/S", "flights", "RTT", "client CPU ms", "server CPU ms")
    body = [
        (
            suite.name,
            str(c.c2s_bytes),
            str(c.s2c_bytes),
            f"{c.c2s_frames}/{c.s2c_frames}",
            str(c.flights),
            str(c.flights // 2),
            f"{client_ms:.2f}",
            f"{server_ms:.2f}",
        )
        for suite, c, client_ms, server_ms in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(header, widths)), rule]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    lines.append(rule)
    return "\n".join(lines)


def suite_list(text: str) -> tuple[Suite, ...]:
    try:
        return parse_suite_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="sessions per suite (median CPU is reported)")
    parser.add_argument("--client-key", default="ec-p256", choices=[k.value for k in (KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048)])
    parser.add_argument("--suites", type=suite_list, default=ALL_SUITES, help="comma-separated suite names")
    parser.add_argument(
        "--offer-all", action="store_true",
        help="the client offers every suite (one key share per group) and the server accepts only the one measured; "
        "by default the client offers only the measured suite",
    )
    args = parser.parse_args(argv)
    rows = run(args.suites, args.rounds, KeyType(args.client_key), args.offer_all)
    offer = "every suite (3 key shares)" if args.offer_all else "only the measured suite"
    print(f"{args.rounds} sessions per suite, median CPU; client offers {offer}; client certificate {args.client_key}; "
          f"server certificate ec-p256 (ECDSA suites) or rsa-2048 (RSA suites); request {len(OTP_REQUEST)} B, OTP {len(OTP_RESPONSE)} B")
    print(f"machine: {cpu_name()}, {platform.machine()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
