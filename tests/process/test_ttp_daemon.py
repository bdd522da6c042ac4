"""``twistd -n tlsotp-ttp``: its options, its one-line refusals, and what survives ``kill -9``."""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.processes import TWISTD, subprocess_env
from tests.test_ttp_fixtures import mint_token, reactor
from tlsotp.commands.ttp_daemon import Options, makeService
from tlsotp.pki.roles import Role
from tlsotp.services.enrollment import Credentials, EnrollmentRefused, RootPin, TTPUnavailable, enroll
from tlsotp.ttp.ca import TTPPaths, init_ca
from tlsotp.ttp.store import Store
from tlsotp.ttp.wire import Refusal

WAIT_SECONDS = 30


def twistd_args(pidfile: Path, *plugin_args: str) -> list[str]:
    return [*TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", "-", "tlsotp-ttp", *plugin_args]


class OptionsTests(unittest.TestCase):
    def test_required_and_malformed_options(self) -> None:
        with self.assertRaises(usage.UsageError):
            Options().parseOptions([])
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--data-dir", "x", "--cert-days", "0"])
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--data-dir", "x", "--timeout", "-1"])
        for bad in ("0d", "12x", "-1h", "1.5d", ""):
            with self.assertRaises(usage.UsageError):
                Options().parseOptions(["--data-dir", "x", "--max-lineage", bad])

    def test_max_lineage_takes_a_duration_and_defaults_to_90_days(self) -> None:
        data_dir = Path(self.mktemp())
        init_ca(data_dir)
        options = Options()
        options.parseOptions(["--data-dir", str(data_dir)])
        self.assertEqual(options["max-lineage"], datetime.timedelta(days=90))
        options = Options()
        options.parseOptions(["--data-dir", str(data_dir), "--max-lineage", "12h"])
        self.assertEqual(options["max-lineage"], datetime.timedelta(hours=12))
        service = makeService(options)
        self.assertEqual(service.max_lineage, datetime.timedelta(hours=12))  # type: ignore[attr-defined]

    def test_no_ca_is_one_line_and_exit_1(self) -> None:
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--data-dir", self.mktemp()])
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("tlsotp-ttp: no CA in "), message)
        self.assertIn("tlsotp ttp init", message)
        self.assertNotIn("\n", message)

    def test_bad_listen_endpoint_is_refused_before_starting(self) -> None:
        data_dir = Path(self.mktemp())
        init_ca(data_dir)
        for endpoint in ("nonsense:1", "tcp:notaport"):
            with self.assertRaises(SystemExit) as caught:
                Options().parseOptions(["--data-dir", str(data_dir), "--listen", endpoint])
            self.assertIn(f"bad --listen endpoint {endpoint!r}", str(caught.exception.code))

    def test_encrypted_ca_needs_the_passphrase_file(self) -> None:
        data_dir = Path(self.mktemp())
        init_ca(data_dir, passphrase=b"open sesame")
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(["--data-dir", str(data_dir)])
        self.assertIn("--passphrase-file", str(caught.exception.code))
        passphrase = data_dir.parent / "passphrase"
        passphrase.write_text("wrong\n")
        with self.assertRaises(SystemExit):
            Options().parseOptions(["--data-dir", str(data_dir), "--passphrase-file", str(passphrase)])
        passphrase.write_text("open sesame\n")
        options = Options()
        options.parseOptions(["--data-dir", str(data_dir), "--passphrase-file", str(passphrase), "--cert-days", "3"])
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        self.assertEqual(options["cert-days"], 3)


class TwistdRefusalTests(unittest.TestCase):
    """The real twistd prints one line, not a traceback nor its usage, and exits non-zero."""

    def run_twistd(self, *plugin_args: str) -> subprocess.CompletedProcess[str]:
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        return subprocess.run(
            twistd_args(base / "ttp.pid", *plugin_args), cwd=base, env=subprocess_env(),
            capture_output=True, text=True, timeout=WAIT_SECONDS, stdin=subprocess.DEVNULL,
        )

    def assertOneLineRefusal(self, result: subprocess.CompletedProcess[str], expected: str) -> None:
        """Before logging starts the line goes to stderr; after, twistd routes stderr to its log."""
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Usage:", output)
        self.assertEqual([line for line in output.splitlines() if expected in line].__len__(), 1, output)

    def test_no_ca(self) -> None:
        result = self.run_twistd("--data-dir", self.mktemp())
        self.assertOneLineRefusal(result, "no CA in")
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1)

    async def test_port_in_use(self) -> None:
        data_dir = Path(self.mktemp()).resolve()
        init_ca(data_dir)
        taken = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(taken.stopListening)
        port = taken.getHost().port
        result = self.run_twistd("--data-dir", str(data_dir), "--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertOneLineRefusal(result, "cannot listen on")


class TwistdProcess(ProcessProtocol):
    """A twistd subprocess whose log we read for the port it listens on."""

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"tlsotp-ttp serving on 127\.0\.0\.1:(\d+)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.listening.called:
            self.listening.errback(AssertionError(f"twistd ended before listening:\n{self.output.decode()}"))
        self.ended.callback(None)


class KillTests(unittest.TestCase):
    async def start(self, data_dir: Path, pidfile: Path) -> tuple[TwistdProcess, str]:
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process, sys.executable,
            twistd_args(pidfile, "--data-dir", str(data_dir), "--listen", "tcp:0:interface=127.0.0.1"),
            env=subprocess_env(), path=str(pidfile.parent),
        )
        process.transport = transport

        def stop() -> Deferred[None] | None:
            if process.ended.called:
                return None
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
            return process.ended

        self.addCleanup(stop)
        port = await process.listening.addTimeout(WAIT_SECONDS, reactor)
        return process, f"tcp:host=127.0.0.1:port={port}"

    async def test_kill_9_mid_issuance_loses_nothing_given_out(self) -> None:
        base = Path(self.mktemp()).resolve()
        data_dir = base / "ttp"
        ca = init_ca(data_dir)
        pin = RootPin.from_fingerprint(ca.fingerprint)
        pidfile = base / "ttp.pid"
        process, endpoint = await self.start(data_dir, pidfile)
        self.assertTrue(pidfile.exists())

        names = [f"party{i}.example" for i in range(30)]
        tokens = {name: str(mint_token(data_dir, name, Role.CLIENT)) for name in names}
        killed: list[bool] = []

        def kill_at_first_certificate(credentials: Credentials) -> Credentials:
            if not killed:
                killed.append(True)
                process.transport.signalProcess(signal.SIGKILL.name.removeprefix("SIG"))  # type: ignore[call-arg, union-attr]
            return credentials

        attempts = [
            enroll(reactor, endpoint, data_dir=base / name, pin=pin, token=tokens[name], name=name, role=Role.CLIENT,
                   timeout=WAIT_SECONDS).addCallback(kill_at_first_certificate)
            for name in names
        ]
        results = await DeferredList(attempts, consumeErrors=True)
        await process.ended.addTimeout(WAIT_SECONDS, reactor)
        self.assertEqual(killed, [True])
        received = {name: value for name, (ok, value) in zip(names, results) if ok}
        failures = [value.value for ok, value in results if not ok]  # type: ignore[attr-defined]
        self.assertGreaterEqual(len(received), 1)
        self.assertTrue(all(isinstance(f, TTPUnavailable) for f in failures), failures)

        store = Store.open(TTPPaths(data_dir).db)
        try:
            records = store.list_certificates()
            by_serial = {record.serial: record for record in records}
            self.assertEqual(len(by_serial), len(records))  # serials unique
            for name, credentials in received.items():
                record = by_serial[credentials.leaf.serial_number]
                self.assertEqual(record.certificate(), credentials.leaf)
                self.assertEqual(record.name, name)
            spent = {}
            for name in names:
                token_record = store.get_token(tokens[name].split(".")[0])
                assert token_record is not None
                if token_record.spent_at is not None:
                    spent[name] = token_record.spent_serial
            # Every spent token bought exactly one recorded certificate, and nothing else was issued.
            self.assertEqual(sorted(spent.values()), sorted(by_serial))
            self.assertTrue(set(received) <= set(spent))
        finally:
            store.close()

        # Restarted over the stale pidfile, the TTP still refuses every spent token.
        process, endpoint = await self.start(data_dir, pidfile)
        reused = next(iter(received))
        with self.assertRaises(EnrollmentRefused) as caught:
            await enroll(reactor, endpoint, data_dir=base / "reuse", pin=pin, token=tokens[reused], name=reused,
                         role=Role.CLIENT, timeout=WAIT_SECONDS)
        self.assertEqual(caught.exception.code, Refusal.token_spent)
        # Every requester that got no reply re-runs the same enrollment (same data dir, so the same
        # pending key): a token spent before the kill gives back the certificate it bought, an
        # unspent one buys its first. Nobody needs a new token, and nothing is issued twice.
        retried = await DeferredList(
            [
                enroll(reactor, endpoint, data_dir=base / name, pin=pin, token=tokens[name], name=name,
                       role=Role.CLIENT, timeout=WAIT_SECONDS)
                for name in names if name not in received
            ],
            consumeErrors=True,
        )
        self.assertTrue(all(ok for ok, _ in retried), [value for ok, value in retried if not ok])
        for (_, credentials), name in zip(retried, [n for n in names if n not in received]):
            if name in spent:
                self.assertEqual(credentials.leaf.serial_number, spent[name])
        store = Store.open(TTPPaths(data_dir).db)
        try:
            self.assertEqual(len(store.list_certificates()), len(names))
        finally:
            store.close()
        process.transport.signalProcess("TERM")  # type: ignore[call-arg, union-attr]
        await process.ended.addTimeout(WAIT_SECONDS, reactor)
        self.assertFalse(pidfile.exists())  # a clean stop removes it
