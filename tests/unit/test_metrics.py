"""``--metrics``: the health rules, the ``/health`` resource, the registries, and the option check.

The resource and the services are served on a real loopback ``Site`` and read with Twisted's
own HTTP client; the exposition is read back with prometheus-client's parser.
"""

from __future__ import annotations

import datetime
import sqlite3
import sys
from pathlib import Path
from typing import Any, cast

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from tests.test_ttp_fixtures import reactor
from tlsotp.commands import server_daemon, ttp_daemon
from tlsotp.commands.demo import mint, port_of
from tlsotp.commands.metrics_option import check_metrics_option
from tlsotp.database_checks import check_writable, create_private
from tlsotp.pki.roles import Role
from tlsotp.services.bank_service import BankServerSettings, build_service
from tlsotp.services.daemon_services import ConnectionDrain
from tlsotp.services.health import PROBE_TIMEOUT, HealthResource, certificate_problems, crl_problems, ttp_problems
from tlsotp.services.metrics import BankMetrics, TTPMetrics, database_problems
from tlsotp.services.sqlite_worker import DatabaseWorker
from tlsotp.services.ttp_service import TTPService
from tlsotp.ttp import wire
from tlsotp.ttp.ca import init_ca
from tlsotp.ttp.issuer import Outcome, refused

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
HOUR = datetime.timedelta(hours=1)


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def get(port: int, path: str) -> tuple[int, str]:
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
    return response.code, (await readBody(response)).decode()


class HealthRuleTests(unittest.SynchronousTestCase):
    def test_a_crl_is_stale_once_its_next_update_has_passed(self) -> None:
        self.assertEqual(crl_problems(NOW + HOUR, NOW), [])
        self.assertEqual(crl_problems(NOW, NOW), ["the CRL is stale: its next update was due at 2026-12-01 12:00:00 UTC"])
        self.assertEqual(crl_problems(None, NOW), ["no CRL"])

    def test_a_certificate_is_unhealthy_when_expired_or_within_the_margin(self) -> None:
        margin = 24 * HOUR
        self.assertEqual(certificate_problems(NOW + 25 * HOUR, NOW, margin), [])
        [soon] = certificate_problems(NOW + 23 * HOUR, NOW, margin)
        self.assertIn("has not been renewed", soon)
        [expired] = certificate_problems(NOW - HOUR, NOW, margin)
        self.assertIn("expired at 2026-12-01 11:00:00 UTC", expired)

    def test_the_ttp_is_unreachable_only_past_the_limit(self) -> None:
        self.assertEqual(ttp_problems(None, 1000.0, 60.0), [])
        self.assertEqual(ttp_problems(940.0, 1000.0, 60.0), [])
        [problem] = ttp_problems(939.0, 1000.0, 60.0)
        self.assertIn("unreachable for 61 s", problem)


class HealthResourceTests(unittest.TestCase):
    def serve(self, check: Any, clock: Any = reactor) -> int:
        port = reactor.listenTCP(0, Site(HealthResource(check, clock)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_ok_is_200(self) -> None:
        port = self.serve(lambda: succeed([]))
        self.assertEqual(await get(port, "/"), (200, "ok\n"))

    async def test_problems_are_503_on_one_line(self) -> None:
        port = self.serve(lambda: succeed(["the CRL is stale", "the database\ncannot be written"]))
        self.assertEqual(await get(port, "/"), (503, "the CRL is stale; the database cannot be written\n"))

    async def test_a_check_that_never_answers_is_503_after_the_bound(self) -> None:
        clock = Clock()
        checks: list[Deferred[list[str]]] = []

        def check() -> Deferred[list[str]]:
            checks.append(Deferred())
            return checks[-1]

        port = self.serve(check, clock)
        answer = Deferred.fromCoroutine(get(port, "/"))
        while not checks:  # the request reached the resource
            await Deferred.fromCoroutine(_turn())
        clock.advance(PROBE_TIMEOUT)
        code, body = await answer
        self.assertEqual(code, 503)
        self.assertIn("the health check failed", body)


async def _turn() -> None:
    await deferLater(reactor, 0.01, lambda: None)


class DatabaseProbeTests(unittest.TestCase):
    async def test_a_database_that_cannot_be_written_is_a_problem(self) -> None:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()

        def open_read_only() -> sqlite3.Connection:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)

        read_only: DatabaseWorker[sqlite3.Connection] = DatabaseWorker(reactor, open_read_only, sqlite3.Connection.close)
        read_only.startService()
        self.addCleanup(read_only.stopService)
        [problem] = await database_problems(read_only, check_writable, path)
        self.assertIn(f"database {path} cannot be written", problem)

        writable: DatabaseWorker[sqlite3.Connection] = DatabaseWorker(
            reactor, lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None), sqlite3.Connection.close
        )
        writable.startService()
        self.addCleanup(writable.stopService)
        self.assertEqual(await database_problems(writable, check_writable, path), [])
        await writable.stopService()
        self.assertEqual(await database_problems(writable, check_writable, path), ["the database is not open"])


class RegistryTests(unittest.SynchronousTestCase):
    def test_ttp_replies_are_counted_by_kind_and_refusal_code(self) -> None:
        clock = Clock()
        worker: DatabaseWorker[Any] = DatabaseWorker(reactor, object, lambda _: None)  # not started: no snapshot
        connections = ConnectionDrain(clock)
        metrics = TTPMetrics(worker, connections, clock)
        issued = Outcome(wire.Issued(b"root", b"leaf"), "issued")
        metrics.replied(wire.MessageType.enroll_request, issued, 0.01)
        metrics.replied(wire.MessageType.renew_request, issued, 0.02)
        metrics.replied(wire.MessageType.enroll_request, refused(wire.Refusal.token_spent, "spent"), 0.01)
        metrics.replied(None, refused(wire.Refusal.decode_error, "bad netstring"), 0.0)
        samples = samples_of(generate_latest(metrics.registry).decode())
        self.assertEqual(samples[("tlsotp_ttp_certificates_issued_total", frozenset())], 1)
        self.assertEqual(samples[("tlsotp_ttp_certificates_renewed_total", frozenset())], 1)
        self.assertEqual(samples[("tlsotp_ttp_refusals_total", frozenset({("code", "token_spent")}))], 1)
        self.assertEqual(samples[("tlsotp_ttp_refusals_total", frozenset({("code", "decode_error")}))], 1)
        self.assertEqual(samples[("tlsotp_ttp_request_seconds_count", frozenset())], 3)  # with a request only
        self.assertEqual(samples[("tlsotp_ttp_open_connections", frozenset())], 0)
        self.assertNotIn(("tlsotp_ttp_tokens_outstanding", frozenset()), samples)  # no snapshot yet

    def test_two_services_in_one_process_have_their_own_registries(self) -> None:
        # Two bank servers built (not started) in one process: with the library's global
        # registry, the second one's metrics would be refused as duplicated time series.
        services = [
            build_service(BankServerSettings(data_dir=Path(self.mktemp()), name="bank.example"), reactor=Clock())
            for _ in range(2)
        ]
        first, second = (BankMetrics(service, Clock(), renew_before=3600, ttp_unreachable_after=60) for service in services)
        first.otp_issued()
        first.session_ended("issued", "none", 0.1)
        second.session_ended("refused", "bad_certificate", 0.2)
        one = samples_of(generate_latest(first.registry).decode())
        two = samples_of(generate_latest(second.registry).decode())
        self.assertEqual(one[("tlsotp_otps_issued_total", frozenset())], 1)
        self.assertEqual(two[("tlsotp_otps_issued_total", frozenset())], 0)
        self.assertEqual(one[("tlsotp_sessions_total", frozenset({("outcome", "issued"), ("alert", "none")}))], 1)
        self.assertNotIn(("tlsotp_sessions_total", frozenset({("outcome", "issued"), ("alert", "none")})), two)
        self.assertEqual(first.problems_now(), ["starting"])


class OptionTests(unittest.SynchronousTestCase):
    def test_without_prometheus_client_metrics_refuses_in_one_line(self) -> None:
        # An entry of None makes ``import prometheus_client`` raise ImportError, as if not installed.
        installed = sys.modules["prometheus_client"]
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        self.addCleanup(sys.modules.__setitem__, "prometheus_client", installed)
        with self.assertRaises(SystemExit) as raised:
            check_metrics_option("tlsotp-server", "tcp:0")
        self.assertEqual(
            str(raised.exception.code),
            "tlsotp-server: --metrics needs prometheus-client, which is not installed: install tlsotp[metrics]",
        )
        check_metrics_option("tlsotp-server", None)  # not asked for: not needed

    def test_a_bad_endpoint_refuses_in_one_line(self) -> None:
        with self.assertRaises(SystemExit) as raised:
            ttp_daemon.Options().parseOptions(["--data-dir", "/nonexistent", "--metrics", "nonsense:1"])  # type: ignore[no-untyped-call]
        self.assertIn("tlsotp-ttp: bad --metrics endpoint 'nonsense:1'", str(raised.exception.code))


class InProcessTests(unittest.TestCase):
    async def test_a_ttp_and_a_bank_server_in_one_process_serve_their_own_metrics(self) -> None:
        workdir = Path(self.mktemp()).resolve()
        ca = init_ca(workdir / "ttp")
        ttp = TTPService(
            reactor, ca, workdir / "ttp", listen="tcp:0:interface=127.0.0.1", metrics="tcp:0:interface=127.0.0.1"
        )
        ttp.startService()
        self.addCleanup(ttp.stopService)
        options = server_daemon.Options()
        options.parseOptions([  # type: ignore[no-untyped-call]
            "--data-dir", str(workdir / "bank"), "--name", "bank.example", "--listen", "tcp:0:interface=127.0.0.1",
            "--ttp", f"tcp:host=127.0.0.1:port={port_of(ttp.port)}", "--ca-fingerprint", ca.fingerprint,
            "--token", mint(workdir / "ttp", "bank.example", Role.SERVER), "--metrics", "tcp:0:interface=127.0.0.1",
        ])
        server = build_service(server_daemon.settings_from(options), reactor)
        server.startService()
        self.addCleanup(server.stopService)
        await server.ready
        assert ttp.metrics_service is not None and server.metrics_service is not None
        ttp_port = port_of(ttp.metrics_service.listener.port)
        bank_port = port_of(server.metrics_service.listener.port)

        self.assertEqual(await get(bank_port, "/health"), (200, "ok\n"))
        self.assertEqual(await get(ttp_port, "/health"), (200, "ok\n"))
        bank = samples_of((await get(bank_port, "/metrics"))[1])
        ttp_samples = samples_of((await get(ttp_port, "/metrics"))[1])
        self.assertIn(("tlsotp_crl_number", frozenset()), bank)
        self.assertNotIn(("tlsotp_ttp_certificates_issued_total", frozenset()), bank)
        self.assertEqual(ttp_samples[("tlsotp_ttp_certificates_issued_total", frozenset())], 1)  # the bank's
        self.assertEqual(ttp_samples[("tlsotp_ttp_crls_served_total", frozenset())], 1)

        # Seen from a day after the CRL's next update: stale, and the certificate near its end.
        metrics = cast(BankMetrics, server.factory.events)  # type: ignore[union-attr]
        metrics.wall_clock = lambda: datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
        code, body = await get(bank_port, "/health")
        self.assertEqual(code, 503)
        self.assertIn("the CRL is stale", body)
        self.assertIn("the certificate expired", body)
