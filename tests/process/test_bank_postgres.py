"""Two real ``twistd tlsotp-server`` daemons sharing one PostgreSQL database (``--database``).

One TTP daemon, and servers A and B on two ports, each enrolled with its own token for the same
name (as behind a TCP load balancer) and given the same pepper file (A makes it, B gets a copy),
on a PostgreSQL server of this module's own, which the outage test stops and starts again. The
client runs in this process (``tlsotp.client``) over real loopback TCP, so many sessions can run
at once: a code issued on A is accepted on B; twenty confirmations of one code spread over A and
B are accepted once; wrong guesses alternating A/B lock after ``--max-attempts``; PostgreSQL
stopped under load fails sessions with ``internal_error`` and they succeed again once it is back,
with no daemon restart and one outage line in each log.
"""

from __future__ import annotations

import atexit
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.postgres_cluster import PostgresCluster, require_binaries
from tests.process.test_end_to_end import tlsotp
from tests.processes import REPO, TWISTD, Daemon
from tlsotp.client import (
    Alert,
    ClientSettings,
    ConfirmStatus,
    PeerRefused,
    RootPin,
    confirm_otp,
    enroll,
    request_otp,
)
from tlsotp.otp.messages import ConfirmResult, OTPGrant
from tlsotp.pki.roles import Role

SERVER_NAME = "bank.example"
CLIENT_NAME = "alice.example"
MAX_ATTEMPTS = 3


class Deployment:
    """The TTP, PostgreSQL and the two servers, started by the first test, stopped at exit."""

    started: ClassVar[bool] = False
    failure: ClassVar[str | None] = None
    workdir: ClassVar[Path]
    postgres: ClassVar[PostgresCluster]
    daemons: ClassVar[dict[str, Daemon]]
    endpoints: ClassVar[dict[str, str]]
    ttp_endpoint: ClassVar[str]
    database_url: ClassVar[str]
    fingerprint: ClassVar[str]

    @classmethod
    def start(cls, testcase: unittest.TestCase) -> None:
        if cls.started:
            return
        if cls.failure is not None:
            raise AssertionError(f"the deployment failed to start earlier: {cls.failure}")
        binaries = require_binaries(testcase)  # skips with its reason
        atexit.register(cls.stop)
        cls.workdir = Path(tempfile.mkdtemp(prefix="tlsotp-pgbank-"))
        cls.daemons = {}
        try:
            cls.postgres = PostgresCluster(binaries)
            cls.postgres.start()
            url = cls.database_url = cls.postgres.create_database("bank")
            init = tlsotp("ttp", "init", "--data-dir", str(cls.workdir / "ttp"))
            match = re.search(r"sha256:[0-9a-f]{64}", init.stdout)
            assert match, init.stdout
            cls.fingerprint = match.group(0)
            ttp = cls.daemons["ttp"] = Daemon(
                cls.workdir, "ttp", "tlsotp-ttp", "--data-dir", str(cls.workdir / "ttp"),
                "--listen", "tcp:0:interface=127.0.0.1",
            )
            ttp.wait_ready()
            cls.ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"
            cls.endpoints = {}
            for name in ("a", "b"):
                data_dir = cls.workdir / f"server-{name}"
                if name == "b":  # the operator copies A's pepper to B, private
                    data_dir.mkdir(mode=0o700)
                    shutil.copyfile(cls.workdir / "server-a" / "otp-pepper.bin", data_dir / "otp-pepper.bin")
                    (data_dir / "otp-pepper.bin").chmod(0o600)
                daemon = cls.daemons[name] = Daemon(
                    cls.workdir, f"server-{name}", "tlsotp-server", "--data-dir", str(data_dir),
                    "--name", SERVER_NAME, "--listen", "tcp:0:interface=127.0.0.1", "--ttp", cls.ttp_endpoint,
                    "--ca-fingerprint", cls.fingerprint, "--token", cls.token(SERVER_NAME, "server"),
                    "--database", url, "--max-attempts", str(MAX_ATTEMPTS),
                )
                daemon.wait_ready()
                cls.endpoints[name] = f"tcp:host=127.0.0.1:port={daemon.port}"
        except BaseException as exc:
            cls.failure = str(exc)[:3000]
            cls.stop()
            raise
        cls.started = True

    @classmethod
    def token(cls, name: str, role: str) -> str:
        out = tlsotp("ttp", "token", "--data-dir", str(cls.workdir / "ttp"), "--name", name, "--role", role).stdout
        return out.strip().splitlines()[-1].strip()

    @classmethod
    def stop(cls) -> None:
        for daemon in getattr(cls, "daemons", {}).values():
            daemon.stop()
        if hasattr(cls, "postgres"):
            cls.postgres.destroy()
        if hasattr(cls, "workdir"):
            shutil.rmtree(cls.workdir, ignore_errors=True)


class SharedDatabaseTests(unittest.TestCase):
    timeout = 120
    settings: ClassVar[ClientSettings | None] = None

    async def prepare(self) -> None:
        """The deployment, and this client enrolled (once for the class)."""
        Deployment.start(self)
        if SharedDatabaseTests.settings is None:
            credentials = await enroll(
                reactor, Deployment.ttp_endpoint, data_dir=Deployment.workdir / "client",
                pin=RootPin.from_fingerprint(Deployment.fingerprint), token=Deployment.token(CLIENT_NAME, "client"),
                name=CLIENT_NAME, role=Role.CLIENT,
            )
            SharedDatabaseTests.settings = ClientSettings(
                key=credentials.key, chain=credentials.chain, root=credentials.root, server_name=SERVER_NAME, crl=None,
                timeout_seconds=30,
            )

    async def issue(self, server: str, transaction: str) -> OTPGrant:
        await self.prepare()
        assert self.settings is not None
        answer = (await request_otp(reactor, Deployment.endpoints[server], self.settings, transaction)).answer
        assert isinstance(answer, OTPGrant)
        return answer

    async def confirm(self, server: str, transaction: str, code: str) -> ConfirmResult:
        await self.prepare()
        assert self.settings is not None
        answer = (await confirm_otp(reactor, Deployment.endpoints[server], self.settings, transaction, code)).answer
        assert isinstance(answer, ConfirmResult)
        return answer

    async def test_issued_on_a_confirmed_on_b(self) -> None:
        grant = await self.issue("a", "Rs 10 to Bob")
        self.assertEqual((await self.confirm("b", "Rs 10 to Bob", grant.code)).status, ConfirmStatus.accepted)
        self.assertEqual((await self.confirm("a", "Rs 10 to Bob", grant.code)).status, ConfirmStatus.already_used)

    async def test_twenty_confirmations_over_both_servers_accept_one(self) -> None:
        grant = await self.issue("b", "Rs 20 to Bob")
        sessions = [ensureDeferred(self.confirm("ab"[i % 2], "Rs 20 to Bob", grant.code)) for i in range(20)]
        results: list[tuple[bool, Any]] = await DeferredList(sessions, consumeErrors=True)
        statuses = sorted(result.status.name if ok else repr(result.value) for ok, result in results)
        self.assertEqual(statuses, ["accepted"] + ["already_used"] * 19)

    async def test_wrong_guesses_alternating_servers_lock_after_max_attempts(self) -> None:
        grant = await self.issue("a", "Rs 30 to Bob")
        wrong = str((int(grant.code) + 1) % 10**6).zfill(6)
        answers = [await self.confirm("ab"[i % 2], "Rs 30 to Bob", wrong) for i in range(MAX_ATTEMPTS)]
        self.assertEqual([(a.status, a.attempts_left) for a in answers],
                         [(ConfirmStatus.wrong_code, 2), (ConfirmStatus.wrong_code, 1), (ConfirmStatus.locked, 0)])
        self.assertEqual((await self.confirm("b", "Rs 30 to Bob", grant.code)).status, ConfirmStatus.locked)
        with self.assertRaises(PeerRefused) as caught:
            await self.issue("a", "Rs 30 to Bob")  # no fresh code buys more guesses, on either server
        self.assertEqual(caught.exception.alert, Alert.access_denied)

    async def test_postgres_restarted_under_load_sessions_fail_then_recover(self) -> None:
        outcomes: dict[str, list[str]] = {"a": [], "b": []}
        running = True

        async def load(server: str) -> None:
            n = 0
            while running:
                n += 1
                try:
                    await self.issue(server, f"Rs {n} to Carol")
                    outcomes[server].append("ok")
                except PeerRefused as exc:
                    outcomes[server].append(exc.alert.name)
                await deferLater(reactor, 0.02, lambda: None)

        loads = [ensureDeferred(load(server)) for server in "ab" for _ in range(2)]
        try:
            await self.until(lambda: all("ok" in o for o in outcomes.values()), "sessions before the outage")
            await deferToThread(Deployment.postgres.stop, "fast")
            failing = {server: len(o) for server, o in outcomes.items()}
            await self.until(
                lambda: all(o[failing[s]:].count("internal_error") >= 3 for s, o in outcomes.items()),
                "sessions failing with internal_error while PostgreSQL is down",
            )
            await deferToThread(Deployment.postgres.start)
            back = {server: len(o) for server, o in outcomes.items()}
            await self.until(lambda: all("ok" in o[back[s]:] for s, o in outcomes.items()), "sessions after the restart")
        finally:
            running = False
            await DeferredList(loads, consumeErrors=True)
        during = {s: o[failing[s]:back[s]] for s, o in outcomes.items()}
        self.assertEqual({status for o in during.values() for status in o} - {"ok"}, {"internal_error"}, during)
        for server in "ab":
            log = Deployment.daemons[server].wait_for_log("database reachable again")
            self.assertEqual(log.count("database unreachable"), 1, log[-4000:])
            self.assertEqual(log.count("database reachable again"), 1, log[-4000:])
            self.assertNotIn("Traceback", log)
            self.assertNotIn("OTP store failed", log)  # per-session lines: none

    async def test_another_pepper_a_newer_schema_or_no_database_stops_the_start_in_one_line(self) -> None:
        await self.prepare()
        # C: a copy of A's data dir (its credentials), with a pepper of its own.
        data_dir = Deployment.workdir / "server-c"
        shutil.copytree(Deployment.workdir / "server-a", data_dir)
        (data_dir / "otp-pepper.bin").write_bytes(b"c" * 32)
        result, log = await deferToThread(self.server, data_dir, "c1", Deployment.database_url)
        self.assertEqual(result, 1, log)
        self.assertEqual(len(re.findall("tlsotp-server cannot start:.*not the one the database's codes were made with", log)),
                         1, log)
        # A database whose OTP schema is newer than this tlsotp's.
        newer = Deployment.postgres.create_database("newer")
        import psycopg

        connection = psycopg.connect(newer, autocommit=True)
        try:
            connection.execute("CREATE TABLE schema_version (store TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            connection.execute("INSERT INTO schema_version VALUES ('otp', 99)")
        finally:
            connection.close()
        result, log = await deferToThread(self.server, data_dir, "c2", newer)
        self.assertEqual(result, 1, log)
        self.assertEqual(len(re.findall("tlsotp-server cannot start:.*OTP schema version 99 is newer", log)), 1, log)
        self.assertNotIn("Traceback", log)
        # A database that cannot be reached at start.
        nowhere = f"postgresql://tlsotp@/otp?host={Deployment.workdir / 'no-such-socket-dir'}"
        result, log = await deferToThread(self.server, data_dir, "c3", nowhere)
        self.assertEqual(result, 1, log)
        self.assertEqual(len(re.findall("tlsotp-server cannot start: cannot connect to postgresql://", log)), 1, log)
        self.assertNotIn("Traceback", log)

    def server(self, data_dir: Path, name: str, database: str) -> tuple[int, str]:
        daemon = Daemon(
            Deployment.workdir, f"server-{name}", "tlsotp-server", "--data-dir", str(data_dir), "--name", SERVER_NAME,
            "--listen", "tcp:0:interface=127.0.0.1", "--ttp", Deployment.ttp_endpoint,
            "--ca-fingerprint", Deployment.fingerprint, "--database", database,
        )
        try:
            status = daemon.process.wait(60)
        except subprocess.TimeoutExpired:
            status = -1
        finally:
            daemon.stop()
        return status, daemon.log()

    async def until(self, condition: Any, what: str, seconds: float = 30.0) -> None:
        for _ in range(int(seconds / 0.05)):
            if condition():
                return
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")



class DatabaseOptionTests(unittest.TestCase):
    """``--database`` mistakes are refused before the daemon starts: one line, exit 1."""

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir()
        return subprocess.run(
            [*TWISTD, "-n", "--pidfile", "", "--logfile", str(workdir / "log"), "tlsotp-server",
             "--data-dir", str(workdir / "bank"), "--name", SERVER_NAME, *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def test_a_password_in_the_url_is_refused(self) -> None:
        result = self.twistd("--database", "postgresql://bank:secret@db.example/otp")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("--database must not hold a password", result.stderr)
        self.assertNotIn("secret", result.stderr)

    def test_database_options_need_database(self) -> None:
        result = self.twistd("--otp-pepper-file", "/nonexistent")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--otp-pepper-file goes with --database", result.stderr + result.stdout)
