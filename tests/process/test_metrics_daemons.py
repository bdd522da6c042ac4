"""``--metrics`` on the real daemons: ``/metrics`` after real sessions, ``/health`` going 503 and back.

The TTP and the bank server run as ``twistd -n`` subprocesses, each with ``--metrics tcp:0``
(its port read from the daemon's log, ``tests.processes.metrics_port``); real ``tlsotp client``
processes run the sessions; the test scrapes with Twisted's HTTP client and reads the exposition
back with prometheus-client's own parser.

The bank server reaches the TTP through a relay in this process, which the test can cut: its
CRL refreshes (every second) then fail, its CRL (valid 10 s, from ``--crl-hours 10s``) goes
stale, and ``/health`` turns 503; once the relay forwards again, the next refresh brings it back
to 200. Both are awaited as conditions, with a bound.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.portforward import ProxyFactory
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from tests.process.test_daemon_drain import Daemon, spawn_twistd
from tests.processes import REPO, TLSOTP, TWISTD, guarded, metrics_port, subprocess_env
from tests.test_ttp_fixtures import mint_token, reactor
from tlsotp.pki.credentials import RootPin
from tlsotp.pki.roles import Role
from tlsotp.services.enrollment import enroll
from tlsotp.ttp.ca import init_ca

WAIT_SECONDS = 40.0
SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"
TTP_SERVING = rb"tlsotp-ttp serving on 127\.0\.0\.1:(\d+)"
SERVER_LISTENING = rb"tlsotp-server \S+ listening on 127\.0\.0\.1:(\d+)"
OTP_LINE = re.compile(rb"The OTP for transferring .+ is (\d+)\.")


async def eventually(condition: Any, what: str, seconds: float = WAIT_SECONDS) -> Any:
    """Await ``condition()`` (a coroutine function) until it returns a true value, within a bound."""
    deadline = time.monotonic() + seconds
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.1, lambda: None)


async def metrics_port_of(daemon: Daemon) -> int:
    async def found() -> int | None:
        if daemon.ended.called:
            raise AssertionError(f"the daemon ended:\n{daemon.log}")
        return metrics_port(daemon.log)

    return cast(int, await eventually(found, "the metrics listener's log line"))


async def get(port: int, path: str) -> tuple[int, str]:
    """A real HTTP GET on loopback: the status code and the body."""
    agent = Agent(reactor)
    response = await agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode()).addTimeout(WAIT_SECONDS, reactor)
    body = await readBody(response)
    return response.code, body.decode()


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics, parsed by prometheus-client: sample name and labels -> value."""
    code, text = await get(port, "/metrics")
    assert code == 200, (code, text)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Cuttable(Factory):
    """Forwards to the real TTP, or once ``cut``, closes each connection at once."""

    def __init__(self, port: int) -> None:
        self.forward = ProxyFactory("127.0.0.1", port)
        self.cut = False

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.cut:
            return Closing()
        return self.forward.buildProtocol(addr)  # type: ignore[no-any-return]


class Closing(Protocol):
    def connectionMade(self) -> None:
        cast(Any, self.transport).loseConnection()


class MetricsDaemonTests(unittest.TestCase):
    def start_ttp(self, *extra: str) -> tuple[Path, Daemon, str]:
        self.base = Path(self.mktemp()).resolve()
        ttp_dir = self.base / "ttp"
        ca = init_ca(ttp_dir)
        ttp = spawn_twistd(
            self, "tlsotp-ttp", "--data-dir", str(ttp_dir), "--listen", "tcp:0:interface=127.0.0.1",
            "--metrics", "tcp:0:interface=127.0.0.1", *extra, pattern=TTP_SERVING,
        )
        return ttp_dir, ttp, ca.fingerprint

    async def client(self, client_dir: Path, ttp: str, server_port: int, *args: str) -> tuple[bytes, bytes, int]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*TLSOTP[1:], "client", "--data-dir", str(client_dir), "--ttp", ttp,
             "--server", f"tcp:host=127.0.0.1:port={server_port}", *args],
            env=subprocess_env(), reactor=reactor,
        )
        return out, err, code

    async def test_bank_server_counts_real_sessions_and_health_follows_the_crl(self) -> None:
        ttp_dir, ttp, fingerprint = self.start_ttp("--crl-hours", "10s")
        ttp_port = await ttp.listening.addTimeout(WAIT_SECONDS, reactor)
        ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp_port}"
        relay = Cuttable(ttp_port)
        relaying = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(relay)
        self.addCleanup(relaying.stopListening)
        server = spawn_twistd(
            self, "tlsotp-server", "--data-dir", str(self.base / "bank"), "--name", SERVER_NAME,
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", f"tcp:host=127.0.0.1:port={relaying.getHost().port}",
            "--ca-fingerprint", fingerprint, "--token", str(mint_token(ttp_dir, SERVER_NAME, Role.SERVER)),
            "--crl-refresh", "1s", "--ttp-unreachable-after", "2s", "--metrics", "tcp:0:interface=127.0.0.1",
            pattern=SERVER_LISTENING,
        )
        server_port = await server.listening.addTimeout(WAIT_SECONDS, reactor)
        bank_metrics = await metrics_port_of(server)
        client_dir = self.base / "alice"
        await enroll(
            reactor, ttp_endpoint, data_dir=client_dir, pin=RootPin.from_fingerprint(fingerprint),
            token=str(mint_token(ttp_dir, CLIENT_NAME, Role.CLIENT)), name=CLIENT_NAME, role=Role.CLIENT,
        )

        self.assertEqual(await get(bank_metrics, "/health"), (200, "ok\n"), server.log)
        transaction = ("--server-name", SERVER_NAME, "--transaction", "Rs 500 to the grocer")
        out, err, code = await self.client(client_dir, ttp_endpoint, server_port, *transaction)
        self.assertEqual(code, 0, (out + err).decode() + server.log)
        match = OTP_LINE.search(out)
        assert match, out
        otp = match.group(1).decode()
        for expected in (0, 1):  # accepted, then already used
            out, err, code = await self.client(client_dir, ttp_endpoint, server_port, *transaction, "--confirm", otp)
            self.assertEqual(code, expected, (out + err).decode())
        out, err, code = await self.client(client_dir, ttp_endpoint, server_port, "--server-name", "other.example")
        self.assertEqual(code, 1, (out + err).decode())
        self.assertIn(b"bad_certificate", err)

        async def four_sessions_counted() -> Any:
            samples = await scrape(bank_metrics)
            ended = value(samples, "tlsotp_session_seconds_count")
            return samples if ended >= 4 else None

        samples = await eventually(four_sessions_counted, "four sessions in /metrics")
        self.assertEqual(value(samples, "tlsotp_sessions_total", outcome="issued", alert="none"), 1)
        self.assertEqual(value(samples, "tlsotp_sessions_total", outcome="confirmed", alert="none"), 2)
        self.assertEqual(value(samples, "tlsotp_sessions_total", outcome="peer_alert", alert="bad_certificate"), 1)
        self.assertEqual(value(samples, "tlsotp_otps_issued_total"), 1)
        self.assertEqual(value(samples, "tlsotp_otp_confirmations_total", status="accepted"), 1)
        self.assertEqual(value(samples, "tlsotp_otp_confirmations_total", status="already_used"), 1)
        self.assertEqual(value(samples, "tlsotp_handshake_seconds_count"), 3)  # the refused one never completed
        self.assertEqual(value(samples, "tlsotp_open_connections"), 0)
        self.assertGreaterEqual(value(samples, "tlsotp_crl_number"), 1)
        self.assertGreaterEqual(value(samples, "tlsotp_crl_age_seconds"), 0)
        self.assertGreater(value(samples, "tlsotp_certificate_not_after_timestamp_seconds"), time.time())
        self.assertGreaterEqual(value(samples, "tlsotp_crl_refreshes_total"), 1)

        # The TTP cut off: refreshes fail, the CRL goes stale, /health says so.
        relay.cut = True

        async def unhealthy() -> str | None:
            code, body = await get(bank_metrics, "/health")
            stale = code == 503 and "CRL is stale" in body and "the TTP has been unreachable" in body
            return body if stale else None

        reason = await eventually(unhealthy, "/health to report the stale CRL and the unreachable TTP")
        self.assertEqual(len(reason.splitlines()), 1, reason)
        samples = await scrape(bank_metrics)
        self.assertGreaterEqual(value(samples, "tlsotp_ttp_failures_total", task="crl_refresh"), 1)
        self.assertGreater(value(samples, "tlsotp_ttp_failing_seconds"), 0)

        # The TTP back: the next refresh makes the server healthy again.
        relay.cut = False

        async def healthy() -> bool:
            return await get(bank_metrics, "/health") == (200, "ok\n")

        await eventually(healthy, "/health to be 200 again after a refresh")
        self.assertNotIn("Traceback", server.log)

    async def test_ttp_counts_an_issued_certificate_and_a_refusal_by_code(self) -> None:
        ttp_dir, ttp, fingerprint = self.start_ttp()
        ttp_port = await ttp.listening.addTimeout(WAIT_SECONDS, reactor)
        ttp_metrics = await metrics_port_of(ttp)
        ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp_port}"
        pin = RootPin.from_fingerprint(fingerprint)
        token = str(mint_token(ttp_dir, CLIENT_NAME, Role.CLIENT))
        mint_token(ttp_dir, "bob.example", Role.CLIENT)  # outstanding
        await enroll(
            reactor, ttp_endpoint, data_dir=self.base / "alice", pin=pin, token=token, name=CLIENT_NAME,
            role=Role.CLIENT,
        )
        refused = enroll(  # the same token again, with a new key: spent
            reactor, ttp_endpoint, data_dir=self.base / "alice-again", pin=pin, token=token, name=CLIENT_NAME,
            role=Role.CLIENT,
        )
        failure = await self.assertFailure(refused, Exception)
        self.assertIn("token_spent", str(failure))

        async def counted() -> Any:
            samples = await scrape(ttp_metrics)
            return samples if value(samples, "tlsotp_ttp_refusals_total", code="token_spent") >= 1 else None

        samples = await eventually(counted, "the refusal in /metrics")
        self.assertEqual(value(samples, "tlsotp_ttp_certificates_issued_total"), 1)
        self.assertEqual(value(samples, "tlsotp_ttp_refusals_total", code="token_spent"), 1)
        self.assertEqual(value(samples, "tlsotp_ttp_certificates_renewed_total"), 0)

        async def one_outstanding() -> bool:
            return value(await scrape(ttp_metrics), "tlsotp_ttp_tokens_outstanding") == 1

        await eventually(one_outstanding, "the outstanding-token gauge to follow the enrollment")
        self.assertEqual(await get(ttp_metrics, "/health"), (200, "ok\n"))
        self.assertNotIn("Traceback", ttp.log)


class OptionalDependencyTests(unittest.SynchronousTestCase):
    def test_the_daemons_import_prometheus_client_only_for_metrics(self) -> None:
        """prometheus-client is an extra: building both daemons' services without --metrics
        (the tap modules, the services, the protocols with their event hooks) must not import it."""
        program = (
            "import sys; import tlsotp.commands.server_daemon, tlsotp.commands.ttp_daemon, tlsotp.server; "
            "import tlsotp.services.bank_service, tlsotp.services.ttp_service, tlsotp.services.bank_server; "
            "print(sorted(name for name in sys.modules if name.startswith('prometheus_client')))"
        )
        result = subprocess.run(
            guarded([sys.executable, "-c", program]), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
            timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "[]"), result.stderr)

    def test_without_prometheus_client_metrics_refuses_to_start_in_one_line(self) -> None:
        """Both daemons, with a prometheus_client that cannot be imported first on the path."""
        shim = Path(self.mktemp()).resolve() / "prometheus_client"
        shim.mkdir(parents=True)
        (shim / "__init__.py").write_text("raise ImportError(\"No module named 'prometheus_client'\")\n")
        env = subprocess_env()
        env["PYTHONPATH"] = f"{shim.parent}:{env['PYTHONPATH']}"
        data_dir = str(shim.parent / "data")
        for plugin, args in (
            ("tlsotp-server", ["--data-dir", data_dir, "--name", "bank.example"]),
            ("tlsotp-ttp", ["--data-dir", data_dir]),
        ):
            result = subprocess.run(
                [*TWISTD, "-n", "--pidfile", "", plugin, *args, "--metrics", "tcp:0:interface=127.0.0.1"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertEqual(
                result.stderr.strip().splitlines(),
                [f"{plugin}: --metrics needs prometheus-client, which is not installed: install tlsotp[metrics]"],
            )
