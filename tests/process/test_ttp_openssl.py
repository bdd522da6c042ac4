"""A second opinion: the real ``openssl verify`` on certificates and the CRL our TTP serves."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from twisted.trial import unittest

from tests.processes import guarded
from tests.test_ttp_fixtures import mint_token, reactor, start_ttp
from tlsotp.pki import pem
from tlsotp.pki.roles import Role
from tlsotp.services.enrollment import RootPin, enroll, fetch_crl
from tlsotp.ttp.ca import TTPPaths, init_ca
from tlsotp.ttp.store import Store

OPENSSL = shutil.which("openssl")


class OpenSSLVerifyTests(unittest.TestCase):
    if OPENSSL is None:
        skip = "the openssl command is not installed"

    def openssl_verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert OPENSSL is not None
        return subprocess.run(guarded([OPENSSL, "verify", *args]), capture_output=True, text=True, timeout=30)

    async def test_openssl_accepts_the_right_purpose_and_honours_the_crl(self) -> None:
        base = Path(self.mktemp())
        ttp_dir = base / "ttp"
        ca = init_ca(ttp_dir)
        _, endpoint = start_ttp(self, ttp_dir)
        pin = RootPin.from_fingerprint(ca.fingerprint)
        parties = {}
        for name, role in (("bank.example", Role.SERVER), ("alice.example", Role.CLIENT)):
            await enroll(reactor, endpoint, data_dir=base / name, pin=pin, token=str(mint_token(ttp_dir, name, role)),
                         name=name, role=role)
            parties[role] = str(base / name / "cert.pem")
        root = str(TTPPaths(ttp_dir).root)

        for role, right, wrong in ((Role.SERVER, "sslserver", "sslclient"), (Role.CLIENT, "sslclient", "sslserver")):
            accepted = self.openssl_verify("-CAfile", root, "-purpose", right, parties[role])
            self.assertEqual(accepted.returncode, 0, accepted.stdout + accepted.stderr)
            refused = self.openssl_verify("-CAfile", root, "-purpose", wrong, parties[role])
            self.assertNotEqual(refused.returncode, 0, refused.stdout)

        crl_path = base / "served-crl.pem"
        pem.write_crl(crl_path, await fetch_crl(reactor, endpoint, pin=pin))
        fresh = self.openssl_verify("-CAfile", root, "-crl_check", "-CRLfile", str(crl_path), "-purpose", "sslserver", parties[Role.SERVER])
        self.assertEqual(fresh.returncode, 0, fresh.stdout + fresh.stderr)

        store = Store.open(TTPPaths(ttp_dir).db)
        serial = pem.load_certificate(Path(parties[Role.SERVER])).serial_number
        store.revoke(serial, x509.ReasonFlags.key_compromise, now=ca.root.not_valid_before_utc)
        store.close()
        pem.write_crl(crl_path, await fetch_crl(reactor, endpoint, pin=pin))
        revoked = self.openssl_verify(
            "-CAfile", root, "-crl_check", "-CRLfile", str(crl_path), "-purpose", "sslserver", parties[Role.SERVER]
        )
        self.assertNotEqual(revoked.returncode, 0)
        self.assertIn("revoked", (revoked.stdout + revoked.stderr).lower())
        client = self.openssl_verify(
            "-CAfile", root, "-crl_check", "-CRLfile", str(crl_path), "-purpose", "sslclient", parties[Role.CLIENT]
        )
        self.assertEqual(client.returncode, 0, client.stdout + client.stderr)
