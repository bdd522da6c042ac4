"""The three parties as separate processes over real loopback TCP, driven by the real commands.

One TTP, an EC server and an RSA server run as ``twistd`` daemons for the whole class; each
test runs ``tlsotp client`` as a subprocess and checks the OTP it prints against the server's
own store (the HMAC of the printed code must be the stored one).
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.processes import REPO, TLSOTP, TWISTD, Daemon, subprocess_env
from tests.unit.test_ttp_mitm import MITMProxy
from tlsotp.handshake import ALL_SUITES, KeyExchange, SignatureKind, Suite

COMMAND_SECONDS = 60.0
OTP_LINE = re.compile(r"^The OTP for transferring (?P<tx>.+) is (?P<code>\d+)\.$", re.MULTILINE)


def tlsotp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*TLSOTP, *args],
        cwd=REPO, capture_output=True, text=True, timeout=COMMAND_SECONDS, stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"tlsotp {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


class Cluster:
    """The TTP, the servers and enrolled clients, started once and shared by every test.

    trial has no class-level set-up, so the first test starts the cluster and the process's
    exit stops it; if this process is killed instead, the daemons die with it (PR_SET_PDEATHSIG,
    see tests/processes.py).
    """

    started: ClassVar[bool] = False
    failure: ClassVar[str | None] = None
    workdir: ClassVar[Path]
    fingerprint: ClassVar[str]
    ttp_endpoint: ClassVar[str]
    daemons: ClassVar[list[Daemon]]
    servers: ClassVar[dict[str, tuple[str, Path, str]]]  # "ec"/"rsa" -> (endpoint, data dir, name)
    clients: ClassVar[dict[str, Path]]

    @classmethod
    def start(cls) -> None:
        if cls.started:
            return
        if cls.failure is not None:
            raise AssertionError(f"the cluster failed to start earlier: {cls.failure}")
        atexit.register(cls.stop)
        cls.workdir = Path(tempfile.mkdtemp(prefix="tlsotp-e2e-"))
        cls.daemons = []
        ttp_dir = cls.workdir / "ttp"
        init = tlsotp("ttp", "init", "--data-dir", str(ttp_dir))
        match = re.search(r"sha256:[0-9a-f]{64}", init.stdout)
        assert match, init.stdout
        cls.fingerprint = match.group(0)
        try:
            ttp = Daemon(cls.workdir, "ttp", "tlsotp-ttp", "--data-dir", str(ttp_dir),
                         "--listen", "tcp:0:interface=127.0.0.1")
            cls.daemons.append(ttp)
            ttp.wait_ready()
            cls.ttp_endpoint = f"tcp:host=127.0.0.1:port={ttp.port}"
            cls.servers = {}
            started = []
            for kind, key_type in (("ec", "ec-p256"), ("rsa", "rsa-2048")):
                name = f"{kind}bank.example"
                data_dir = cls.workdir / f"server-{kind}"
                daemon = Daemon(
                    cls.workdir, f"server-{kind}", "tlsotp-server", "--data-dir", str(data_dir),
                    "--name", name, "--listen", "tcp:0:interface=127.0.0.1", "--ttp", cls.ttp_endpoint,
                    "--ca-fingerprint", cls.fingerprint, "--token", cls.token(name, "server"), "--key-type", key_type,
                    "--crl-refresh", "1",
                )
                cls.daemons.append(daemon)
                started.append((kind, daemon, data_dir, name))
            for kind, daemon, data_dir, name in started:
                daemon.wait_ready()
                cls.servers[kind] = (f"tcp:host=127.0.0.1:port={daemon.port}", data_dir, name)
            cls.clients = {}
            for kind, key_type in (("ec", "ec-p384"), ("rsa", "rsa-2048")):
                name = f"{kind}alice.example"
                data_dir = cls.workdir / f"client-{kind}"
                tlsotp(
                    "enroll", "--data-dir", str(data_dir), "--ttp", cls.ttp_endpoint, "--ca-fingerprint",
                    cls.fingerprint, "--token", cls.token(name, "client"), "--name", name, "--role", "client",
                    "--key-type", key_type,
                )
                cls.clients[kind] = data_dir
        except BaseException as exc:
            cls.failure = str(exc)[:2000]
            cls.stop()
            raise
        cls.started = True

    @classmethod
    def stop(cls) -> None:
        for daemon in cls.daemons:
            daemon.stop()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def token(cls, name: str, role: str) -> str:
        out = tlsotp("ttp", "token", "--data-dir", str(cls.workdir / "ttp"), "--name", name, "--role", role).stdout
        return out.strip().splitlines()[-1].strip()


class EndToEndTests(unittest.TestCase):
    def setUp(self) -> None:
        Cluster.start()
        self.workdir = Cluster.workdir
        self.fingerprint = Cluster.fingerprint
        self.ttp_endpoint = Cluster.ttp_endpoint
        self.servers = Cluster.servers
        self.clients = Cluster.clients
        self.daemons = Cluster.daemons
        self.token = Cluster.token

    def client(self, server: str, *args: str, client: str = "ec", check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint, _, name = self.servers[server]
        result = tlsotp(
            "client", "--data-dir", str(self.clients[client]), "--ttp", self.ttp_endpoint,
            "--server", endpoint, "--server-name", name, *args, check=False,
        )
        if check and result.returncode != 0:
            logs = "\n".join(d.log()[-3000:] for d in self.daemons)
            self.fail(f"client exited {result.returncode}:\n{result.stdout}\n{result.stderr}\n{logs}")
        return result

    def stored_mac(self, server: str, client_name: str, transaction: str) -> tuple[bytes, bytes, bytes]:
        data_dir = self.servers[server][1]
        with sqlite3.connect(f"file:{data_dir / 'otp.sqlite3'}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT id, code_mac FROM otps WHERE client = ? AND transaction_text = ? ORDER BY issued_at DESC, rowid DESC",
                (client_name, transaction),
            ).fetchone()
        self.assertIsNotNone(row, "the server has no OTP on record for this transaction")
        return bytes(row[0]), bytes(row[1]), (data_dir / "otp-pepper.bin").read_bytes()

    def check_suite(self, suite: Suite) -> None:
        server = "ec" if suite.authentication is SignatureKind.ECDSA else "rsa"
        client = "rsa" if suite.key_exchange is KeyExchange.RSA_OAEP else "ec"
        transaction = f"Rs 100 via {suite.name}"
        result = self.client(server, "--suites", suite.name, "--transaction", transaction, "--trace", client=client)
        match = OTP_LINE.search(result.stdout)
        assert match, result.stdout
        self.assertEqual(match.group("tx"), transaction)
        self.assertIn(f"suite:        {suite.name}", result.stdout)
        self.assertIn("round trips:  2 ", result.stdout)
        transaction_id, code_mac, pepper = self.stored_mac(server, f"{client}alice.example", transaction)
        expected = hmac.new(pepper, transaction_id + match.group("code").encode(), hashlib.sha256).digest()
        self.assertTrue(hmac.compare_digest(expected, code_mac), "the printed OTP is not the one the server stored")

    def test_confirm_accepted_once_then_refused(self) -> None:
        transaction = "Rs 1,00,000 to your friend's account"
        code = OTP_LINE.search(self.client("ec", "--transaction", transaction).stdout).group("code")  # type: ignore[union-attr]
        accepted = self.client("ec", "--transaction", transaction, "--confirm", code)
        self.assertIn("OTP accepted", accepted.stdout)
        again = self.client("ec", "--transaction", transaction, "--confirm", code, check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already used", again.stderr)

    def test_client_daemon_writes_the_otp_to_a_private_file_not_the_log(self) -> None:
        endpoint, _, name = self.servers["ec"]
        output = self.workdir / "daemon-otp.txt"
        log = self.workdir / "client-daemon.log"
        result = subprocess.run(
            [
                *TWISTD,
                "-n", "--pidfile", "", "--logfile", str(log), "tlsotp-client", "--data-dir", str(self.clients["ec"]),
                "--ttp", self.ttp_endpoint, "--server", endpoint, "--server-name", name, "--output", str(output),
                "--transaction", "Rs 7 to the daemon",
            ],
            cwd=REPO, capture_output=True, text=True, timeout=COMMAND_SECONDS, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, log.read_text())
        self.assertEqual(os.stat(output).st_mode & 0o777, 0o600)
        match = OTP_LINE.search(output.read_text())
        assert match, output.read_text()
        self.assertEqual(match.group("tx"), "Rs 7 to the daemon")
        logged = log.read_text()
        self.assertIn("written to", logged)
        self.assertNotRegex(logged, rf"\b{match.group('code')}\b")

    def test_wrong_server_name_is_refused(self) -> None:
        endpoint = self.servers["ec"][0]
        result = tlsotp(
            "client", "--data-dir", str(self.clients["ec"]), "--ttp", self.ttp_endpoint, "--server", endpoint,
            "--server-name", "rsabank.example", check=False,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("bad_certificate", result.stderr)
        self.assertIn("is not for rsabank.example", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        # The alert reached the server before the client exited, and the server logs it (polled:
        # the daemon may write the line a moment after the client has gone).
        server_log = self.daemons[1].wait_for_log("peer alert: bad_certificate")
        self.assertIn("peer alert: bad_certificate", server_log)
        self.assertNotIn("Traceback", server_log)

    def enroll_client(self, name: str) -> tuple[Path, str]:
        """A fresh client enrolled with its own token; returns its data dir and the enrollment (token id)."""
        data_dir = self.workdir / f"client-{name}"
        token = self.token(name, "client")
        tlsotp("enroll", "--data-dir", str(data_dir), "--ttp", self.ttp_endpoint, "--ca-fingerprint",
               self.fingerprint, "--token", token, "--name", name, "--role", "client")
        return data_dir, token.split(".")[0]

    def session(self, data_dir: Path) -> subprocess.CompletedProcess[str]:
        return tlsotp(
            "client", "--data-dir", str(data_dir), "--ttp", self.ttp_endpoint,
            "--server", self.servers["ec"][0], "--server-name", self.servers["ec"][2], check=False,
        )

    def assertRefusedOnceTheServerKnows(self, data_dir: Path, alert: str = "certificate_revoked") -> None:
        """The EC server refreshes its CRL every second: within a bounded wait it refuses this client."""
        deadline = time.monotonic() + 20
        while True:
            result = self.session(data_dir)
            if result.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(alert, result.stderr)

    def test_stolen_key_renewed_by_the_thief_dies_with_the_owners_revocation(self) -> None:
        """Issue 6.1: a thief copies key.pem + cert.pem and renews; the owner revokes the serial it knows."""
        owner, _ = self.enroll_client("theft-a.example")
        thief = self.workdir / "thief-a"
        shutil.copytree(owner, thief)
        tlsotp("renew", "--data-dir", str(thief), "--ttp", self.ttp_endpoint)
        self.assertIsNotNone(OTP_LINE.search(self.session(thief).stdout))  # the stolen identity works
        known = x509.load_pem_x509_certificate((owner / "cert.pem").read_bytes()).serial_number
        tlsotp("ttp", "revoke", "--data-dir", str(self.workdir / "ttp"), format(known, "x"))
        self.assertRefusedOnceTheServerKnows(thief)
        self.assertRefusedOnceTheServerKnows(owner)
        again = tlsotp("renew", "--data-dir", str(thief), "--ttp", self.ttp_endpoint, check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("not_renewable", again.stderr)

    def test_owner_and_thief_both_renewing_revokes_the_lineage(self) -> None:
        """Reuse detection: the second renewal from one certificate cuts both holders off."""
        owner, enrollment = self.enroll_client("theft-b.example")
        thief = self.workdir / "thief-b"
        shutil.copytree(owner, thief)
        tlsotp("renew", "--data-dir", str(thief), "--ttp", self.ttp_endpoint, "--new-key")
        refused = tlsotp("renew", "--data-dir", str(owner), "--ttp", self.ttp_endpoint, check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("not_renewable", refused.stderr)
        self.assertIn(enrollment, refused.stderr)
        self.assertRefusedOnceTheServerKnows(thief)
        self.assertRefusedOnceTheServerKnows(owner)
        warnings = [line for line in self.daemons[0].log().splitlines() if "KEY REUSE" in line]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(enrollment, warnings[0])
        listing = tlsotp("ttp", "list", "--data-dir", str(self.workdir / "ttp")).stdout
        lineage = [line for line in listing.splitlines() if "theft-b.example" in line]
        self.assertEqual(len(lineage), 2)
        self.assertTrue(all(enrollment in line and line.endswith("revoked (key_compromise)") for line in lineage), lineage)

    async def test_a_lost_reply_costs_no_token(self) -> None:
        """Issue 6.3: the TTP commits and replies, the connection is cut; the same command again succeeds."""
        proxy = MITMProxy(self.ttp_endpoint)
        via_proxy = await proxy.start(self)
        name = "lost-reply.example"
        data_dir = self.workdir / "client-lost-reply"
        enroll_args = ("enroll", "--data-dir", str(data_dir), "--ttp", via_proxy, "--ca-fingerprint", self.fingerprint,
                       "--token", self.token(name, "client"), "--name", name, "--role", "client")
        renew_args = ("renew", "--data-dir", str(data_dir), "--ttp", via_proxy, "--new-key")
        for args, certificates in ((enroll_args, 1), (renew_args, 2)):
            proxy.drop_replies = 1
            lost = await run_tlsotp(*args)
            self.assertEqual(lost[2], 1, lost)
            self.assertIn("without replying", lost[1])
            self.assertIn("run the same command again", lost[1])
            self.assertEqual(len(lost[1].splitlines()), 1, lost[1])
            again = await run_tlsotp(*args)
            self.assertEqual(again[2], 0, again)
            listing = tlsotp("ttp", "list", "--data-dir", str(self.workdir / "ttp")).stdout
            self.assertEqual(sum(name in line for line in listing.splitlines()), certificates, listing)
        self.assertEqual(len(proxy.replies), 4)
        self.assertIsNotNone(OTP_LINE.search(self.session(data_dir).stdout))

    def test_revoked_client_is_refused(self) -> None:
        name = "revoked.example"
        data_dir = self.workdir / "client-revoked"
        tlsotp("enroll", "--data-dir", str(data_dir), "--ttp", self.ttp_endpoint, "--ca-fingerprint",
               self.fingerprint, "--token", self.token(name, "client"), "--name", name, "--role", "client")
        listing = tlsotp("ttp", "list", "--data-dir", str(self.workdir / "ttp")).stdout
        serial = next(re.findall(r"\b[0-9a-f]{16,}\b", line)[0] for line in listing.splitlines() if name in line)
        tlsotp("ttp", "revoke", "--data-dir", str(self.workdir / "ttp"), serial)
        crl = tlsotp("crl", "--ttp", self.ttp_endpoint, "--ca-fingerprint", self.fingerprint).stdout
        self.assertIn(serial.lower(), crl.lower().replace(":", ""))
        # The EC server refreshes its CRL every second (--crl-refresh 1): within a bounded wait,
        # the revoked client is refused by the server itself.
        deadline = time.monotonic() + 20
        while True:
            result = tlsotp(
                "client", "--data-dir", str(data_dir), "--ttp", self.ttp_endpoint,
                "--server", self.servers["ec"][0], "--server-name", self.servers["ec"][2], check=False,
            )
            if result.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn("certificate_revoked", result.stderr)


async def run_tlsotp(*args: str) -> tuple[str, str, int]:
    """``tlsotp`` as a subprocess without blocking the reactor (a proxy in this process must run)."""
    out, err, code = await getProcessOutputAndValue(
        TLSOTP[0], [*TLSOTP[1:], *args], env=subprocess_env(), path=str(REPO), reactor=reactor,
    )
    return out.decode(), err.decode(), code


def _suite_test(suite: Suite) -> object:
    def test(self: EndToEndTests) -> None:
        self.check_suite(suite)

    test.__doc__ = f"{suite.name}: the OTP the client prints is the one the server stored."
    return test


for _suite in ALL_SUITES:
    setattr(EndToEndTests, f"test_suite_{_suite.name.lower()}", _suite_test(_suite))
