"""Two real ``twistd tlsotp-ttp`` processes on one PostgreSQL database, and the operator's
commands on it; then a database that stops and comes back under a running TTP.

The second TTP's data dir holds a copy of the first one's CA key and root: active-active is
the operator's choice of key custody (docs/postgresql_ttp.rst), made explicit here by copying.
"""

from __future__ import annotations

import datetime
import io
import json
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial import unittest

from tests.postgres_cluster import new_cluster, shared_cluster
from tests.processes import TLSOTP, Daemon, subprocess_env
from tests.test_ttp_fixtures import enroll_request, mint_token, reactor
from tlsotp.commands.common import Command
from tlsotp.commands.ttp_admin import ListOptions, RevokeOptions, TokenOptions, TokensOptions
from tlsotp.commands.ttp_daemon import Options, settings_from
from tlsotp.database_url import parse_database_url
from tlsotp.pki.builders import issue_certificate
from tlsotp.pki.keys import KeyType, generate_private_key
from tlsotp.pki.roles import Role
from tlsotp.services.ttp_client import exchange
from tlsotp.ttp import wire
from tlsotp.ttp.ca import CA_CERT_NAME, CA_KEY_NAME, init_ca, load_ca, open_store
from tlsotp.ttp.tokens import Token
from tlsotp.ttp.wire import Refusal

NAME = "bank.example"
RACERS = 20
WAIT = 30.0


def tlsotp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TLSOTP, *args], env=subprocess_env(), capture_output=True, text=True, timeout=60)


def ok(*args: str) -> str:
    done = tlsotp(*args)
    if done.returncode != 0:
        raise AssertionError(f"tlsotp {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


class TwoTTPsOnOneDatabaseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.url = shared_cluster(self).create_database("ttp2")
        self.target = parse_database_url(self.url)
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        self.base = base
        self.dir_a, self.dir_b = base / "ttp-a", base / "ttp-b"
        init_ca(self.dir_a, database=self.target)  # what 'tlsotp ttp init --database' does (OperatorCommandTests)
        self.dir_b.mkdir(mode=0o700)
        for name in (CA_KEY_NAME, CA_CERT_NAME):  # the operator's choice: the same CA on both machines
            shutil.copy2(self.dir_a / name, self.dir_b / name)
        self.daemons = [self.start(self.dir_a, "a"), self.start(self.dir_b, "b")]
        for daemon in self.daemons:
            daemon.wait_ready()

    def start(self, data_dir: Path, name: str) -> Daemon:
        daemon = Daemon(
            self.base, name, "tlsotp-ttp", "--data-dir", str(data_dir), "--listen", "tcp:0:interface=127.0.0.1",
            "--database", self.url,
        )
        self.addCleanup(daemon.stop)
        return daemon

    def endpoint(self, index: int) -> str:
        return f"tcp:host=127.0.0.1:port={self.daemons[index % 2].port}"

    def token(self) -> Token:
        return mint_token(self.dir_a, NAME, Role.SERVER, database=self.target)

    def certificates(self) -> list[int]:
        store = open_store(self.dir_b, self.target)
        try:
            return [record.serial for record in store.list_certificates()]
        finally:
            store.close()

    async def race(self, requests: list[wire.EnrollRequest]) -> list[wire.Reply]:
        """Every request at once, alternating between TTP A and TTP B."""
        return list(await gatherResults(
            [exchange(reactor, self.endpoint(i), request, WAIT) for i, request in enumerate(requests)]
        ))

    async def test_two_ttps_share_one_set_of_guarantees(self) -> None:
        """One pair of daemons for every check (starting them is most of the time)."""
        await self.one_token_raced_over_two_ttps_buys_one_certificate()
        await self.the_same_key_raced_gets_one_certificate_or_token_spent()
        await self.serials_unique_and_a_revocation_on_one_ttp_in_the_other_ttps_crl()

    async def one_token_raced_over_two_ttps_buys_one_certificate(self) -> None:
        token = self.token()
        keys = [generate_private_key(KeyType.EC_P256) for _ in range(RACERS)]
        replies = await self.race([enroll_request(token, NAME, Role.SERVER, key) for key in keys])
        issued = [reply for reply in replies if isinstance(reply, wire.Issued)]
        refused = [reply.code for reply in replies if isinstance(reply, wire.Refused)]
        # 20 different keys: no request can be a retry of the winner, so every other one is token_spent.
        self.assertEqual(len(issued), 1, replies)
        self.assertEqual(refused, [Refusal.token_spent] * (RACERS - 1))
        self.assertEqual(self.certificates(), [x509.load_der_x509_certificate(issued[0].cert_der).serial_number])
        # Both daemons decided: each logged at least one of the refusals.
        for daemon in self.daemons:
            self.assertIn("refused token_spent", daemon.wait_for_log("refused token_spent"))

    async def the_same_key_raced_gets_one_certificate_or_token_spent(self) -> None:
        """The idempotency rule across TTPs: a request that read the token after the winner
        committed is a retry and gets the winner's certificate; one that read it before is token_spent."""
        token = self.token()
        key = generate_private_key(KeyType.EC_P256)
        replies = await self.race([enroll_request(token, NAME, Role.SERVER, key) for _ in range(RACERS)])
        issued = {reply.cert_der for reply in replies if isinstance(reply, wire.Issued)}
        refused = {reply.code for reply in replies if isinstance(reply, wire.Refused)}
        self.assertEqual(len(issued), 1, replies)
        self.assertLessEqual(refused, {Refusal.token_spent})
        self.assertEqual(len(self.certificates()), 2)  # the first race's one, and this one

    async def serials_unique_and_a_revocation_on_one_ttp_in_the_other_ttps_crl(self) -> None:
        tokens = [self.token() for _ in range(6)]
        keys = [generate_private_key(KeyType.EC_P256) for _ in tokens]
        replies = await self.race([enroll_request(t, NAME, Role.SERVER, k) for t, k in zip(tokens, keys)])
        certs = [x509.load_der_x509_certificate(r.cert_der) for r in replies if isinstance(r, wire.Issued)]
        self.assertEqual(len(certs), len(tokens))
        serials = {cert.serial_number for cert in certs}
        self.assertEqual(len(serials), len(tokens))
        self.assertLessEqual(serials, set(self.certificates()))
        self.assertEqual(len(self.certificates()), len(tokens) + 2)
        numbers = [await self.crl_number(0), await self.crl_number(1)]
        victim = certs[0].serial_number
        store = open_store(self.dir_a, self.target)  # what 'tlsotp ttp revoke --database' does on A's machine
        store.revoke(victim, x509.ReasonFlags.key_compromise, now=datetime.datetime.now(datetime.timezone.utc))
        store.close()
        for index in (1, 0):  # B first: it made no part of the revocation
            crl = await self.crl(index)
            self.assertIsNotNone(crl.get_revoked_certificate_by_serial_number(victim))
            numbers.append(self.number(crl))
        self.assertEqual(numbers, sorted(numbers))  # one CRL number sequence for both TTPs
        self.assertGreater(numbers[2], numbers[1])

    async def crl(self, index: int) -> x509.CertificateRevocationList:
        reply = await exchange(reactor, self.endpoint(index), wire.CRLRequest(), WAIT)
        assert isinstance(reply, wire.CRLReply), reply
        return x509.load_der_x509_crl(reply.crl_der)

    async def crl_number(self, index: int) -> int:
        return self.number(await self.crl(index))

    def number(self, crl: x509.CertificateRevocationList) -> int:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


class OperatorCommandTests(unittest.SynchronousTestCase):
    """The commands as the operator runs them (a few as subprocesses, the rest through their
    Options in this process: the same code, without an interpreter start each)."""

    def command(self, options: Command, *args: str) -> str:
        options.parseOptions(list(args))
        out = io.StringIO()
        self.assertEqual(options.execute(reactor, out), 0)
        return out.getvalue()

    def test_every_store_command_takes_database(self) -> None:
        url = shared_cluster(self).create_database("ops")
        data_dir = Path(self.mktemp())
        at = ["--data-dir", str(data_dir), "--database", url]
        ok("ttp", "init", *at)
        self.assertFalse((data_dir / "ttp.sqlite3").exists())
        token = Token.parse(self.command(TokenOptions(), *at, "--name", NAME, "--role", "client").strip())
        spare = Token.parse(self.command(TokenOptions(), *at, "--name", NAME, "--role", "client").strip())
        listed = json.loads(self.command(TokensOptions(), *at, "--json"))
        self.assertEqual(sorted(t["id"] for t in listed["tokens"]), sorted([token.token_id, spare.token_id]))
        ok("ttp", "withdraw", *at, spare.token_id)
        listed = json.loads(self.command(TokensOptions(), *at, "--json"))
        self.assertEqual([t["id"] for t in listed["tokens"]], [token.token_id])
        # A certificate the token bought (as the daemon records it), then revoked by the operator.
        ca = load_ca(data_dir)
        cert = issue_certificate(ca.key, ca.root, generate_private_key(KeyType.EC_P256).public_key(),
                                 name=NAME, role=Role.CLIENT, days=7, now=datetime.datetime.now(datetime.timezone.utc))
        store = open_store(data_dir, parse_database_url(url))
        store.record_enrollment(token.token_id, cert, Role.CLIENT, NAME, now=datetime.datetime.now(datetime.timezone.utc))
        store.close()
        self.assertIn("revoked", self.command(RevokeOptions(), *at, format(cert.serial_number, "x")))
        listed = json.loads(self.command(ListOptions(), *at, "--json"))
        self.assertEqual([c["status"] for c in listed["certificates"]], ["revoked (unspecified)"])
        # Another CA's data dir is refused on this database, in one line and exit 1.
        other = Path(self.mktemp())
        init_ca(other)
        done = tlsotp("ttp", "list", "--data-dir", str(other), "--database", url)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("not to this data dir's CA", done.stderr)
        # A password in the URL, or a password file without a URL, is a usage error before any connection.
        for bad in (["--database", url.replace("tlsotp@", "tlsotp:secret@")], ["--database-password-file", "x"]):
            with self.assertRaises(usage.UsageError) as caught:
                TokensOptions().parseOptions(["--data-dir", str(data_dir), *bad])
            self.assertNotIn("secret", str(caught.exception))


class DatabaseOutageTests(unittest.TestCase):
    async def test_refusals_while_down_one_line_per_outage_and_recovery(self) -> None:
        cluster = new_cluster(self)
        url = cluster.create_database("outage")
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        data_dir = base / "ttp"
        target = parse_database_url(url)
        init_ca(data_dir, database=target)
        daemon = Daemon(base, "ttp", "tlsotp-ttp", "--data-dir", str(data_dir), "--listen", "tcp:0:interface=127.0.0.1",
                        "--database", url)
        self.addCleanup(daemon.stop)
        daemon.wait_ready()
        endpoint = f"tcp:host=127.0.0.1:port={daemon.port}"
        tokens = [mint_token(data_dir, NAME, Role.SERVER, database=target) for _ in range(2)]
        key = generate_private_key(KeyType.EC_P256)
        cluster.stop()
        replies = [await exchange(reactor, endpoint, enroll_request(tokens[0], NAME, Role.SERVER, key), WAIT)
                   for _ in range(5)]
        replies.append(await exchange(reactor, endpoint, wire.CRLRequest(), WAIT))
        self.assertEqual({r.code for r in replies if isinstance(r, wire.Refused)}, {Refusal.internal_error})
        self.assertEqual(len([r for r in replies if isinstance(r, wire.Refused)]), len(replies))
        self.assertTrue(all("unavailable" in r.detail for r in replies if isinstance(r, wire.Refused)))
        cluster.start()
        issued: list[wire.Reply] = []

        async def attempt() -> bool:
            issued.append(await exchange(reactor, endpoint, enroll_request(tokens[0], NAME, Role.SERVER, key), WAIT))
            return isinstance(issued[-1], wire.Issued)

        for _ in range(100):  # bounded (10 s): recovery comes within a reconnect interval or two
            if await attempt():
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertIsInstance(issued[-1], wire.Issued)
        # Another request right after: the store is back for good, no daemon restart.
        again = await exchange(reactor, endpoint, enroll_request(tokens[1], NAME, Role.SERVER, key), WAIT)
        self.assertIsInstance(again, wire.Issued)
        log = daemon.wait_for_log("is back after")
        self.assertEqual(log.count("is unavailable ("), 1, log)
        self.assertEqual(log.count("is back after"), 1, log)
        self.assertNotIn("Traceback", log)
        self.assertIsNone(daemon.process.poll())


class DaemonOptionsTests(unittest.SynchronousTestCase):
    def refusal(self, *args: str) -> str:
        with self.assertRaises(SystemExit) as caught:
            Options().parseOptions(list(args))
        message = str(caught.exception.code)
        self.assertTrue(message.startswith("tlsotp-ttp: "), message)
        self.assertNotIn("\n", message)
        return message

    def test_a_ca_that_is_not_the_databases_does_not_start(self) -> None:
        url = shared_cluster(self).create_database("opts")
        init_ca(Path(self.mktemp()), database=parse_database_url(url))
        mine = Path(self.mktemp())
        init_ca(mine)
        self.assertIn("not to this data dir's CA", self.refusal("--data-dir", str(mine), "--database", url))
        self.assertIn("needs --database", self.refusal("--data-dir", str(mine), "--database-password-file", "pw"))
        self.assertIn("must not hold a password",
                      self.refusal("--data-dir", str(mine), "--database", url.replace("tlsotp@", "tlsotp:pw@")))

    def test_the_database_reaches_the_service(self) -> None:
        url = shared_cluster(self).create_database("opts")
        data_dir = Path(self.mktemp())
        init_ca(data_dir, database=parse_database_url(url))
        options = Options()
        options.parseOptions(["--data-dir", str(data_dir), "--database", url])
        self.assertEqual(settings_from(options).database, parse_database_url(url))
