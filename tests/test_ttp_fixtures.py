"""Shared pieces for the TTP tests (no tests here): cached keys, a TTP data dir, a running TTP.

Keys are generated once per run and reused wherever the key itself does not matter: RSA key
generation is slow.
"""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor as _reactor

from tests.credentials import cached_key as cached_key  # re-exported: the TTP tests import it from here
from tlsotp.commands.ttp_daemon import TTPService
from tlsotp.database_url import PostgresTarget
from tlsotp.pki.csr import build_csr
from tlsotp.pki.keys import KeyType, PrivateKey
from tlsotp.pki.roles import Role
from tlsotp.ttp import tokens, wire
from tlsotp.ttp.ca import CertificateAuthority, TTPPaths, init_ca, open_store
from tlsotp.ttp.issuer import Issuer
from tlsotp.ttp.store import Store

reactor: Any = _reactor


class FakeClock:
    """An adjustable UTC clock for the Issuer."""

    def __init__(self, now: datetime.datetime | None = None) -> None:
        self.now = now or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


def make_ttp(
    data_dir: Path, key_type: KeyType = KeyType.EC_P256, database: PostgresTarget | None = None
) -> CertificateAuthority:
    return init_ca(data_dir, key_type=key_type, database=database)


def mint_token(
    data_dir: Path, name: str, role: Role, *, ttl: datetime.timedelta = datetime.timedelta(hours=1),
    now: datetime.datetime | None = None, database: PostgresTarget | None = None,
) -> tokens.Token:
    """What 'tlsotp ttp token' does, through its own Store connection."""
    store = Store.open(TTPPaths(data_dir).db) if database is None else open_store(data_dir, database)
    try:
        return store.mint_token(name, role, ttl=ttl, now=now or datetime.datetime.now(datetime.timezone.utc))
    finally:
        store.close()


def csr_der(key: PrivateKey, name: str) -> bytes:
    return build_csr(key, name).public_bytes(serialization.Encoding.DER)


def enroll_request(
    token: tokens.Token, name: str, role: Role, key: PrivateKey, *, csr: bytes | None = None
) -> wire.EnrollRequest:
    csr = csr if csr is not None else csr_der(key, name)
    nonce = secrets.token_bytes(wire.NONCE_BYTES)
    proof = tokens.enrollment_proof(token.mac_key(), token.token_id, role, name, nonce, csr)
    return wire.EnrollRequest(token.token_id, role, name, nonce, csr, proof)


class TTPFixture:
    """A TTP data dir with its CA, an Issuer on a FakeClock, and a token minting helper; its
    store is the data dir's SQLite file, or ``database`` (PostgreSQL) when one is given."""

    def __init__(self, base: Path, key_type: KeyType = KeyType.EC_P256, database: PostgresTarget | None = None) -> None:
        self.data_dir = base / "ttp"
        self.database = database
        self.ca = make_ttp(self.data_dir, key_type, self.database)
        self.clock = FakeClock()
        self.store = self.open_store()
        self.issuer = Issuer(self.ca, self.store, clock=self.clock)

    def open_store(self) -> Store:
        """Another connection to this TTP's store, as another process would open it."""
        if self.database is None:
            return Store.open(TTPPaths(self.data_dir).db)
        return open_store(self.data_dir, self.database)

    def token(self, name: str = "bank.example", role: Role = Role.SERVER, **kw: Any) -> tokens.Token:
        kw.setdefault("now", self.clock.now)
        kw.setdefault("database", self.database)
        return mint_token(self.data_dir, name, role, **kw)

    def close(self) -> None:
        self.store.close()


def start_ttp(testcase: Any, data_dir: Path, **kw: Any) -> tuple[TTPService, str]:
    """A TTPService on a free loopback port, stopped at cleanup; returns it and its endpoint."""
    service = TTPService(reactor, _ca_of(data_dir), data_dir, listen="tcp:0:interface=127.0.0.1", **kw)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service, f"tcp:host=127.0.0.1:port={cast(Any, service.port).getHost().port}"


def _ca_of(data_dir: Path) -> CertificateAuthority:
    from tlsotp.ttp.ca import load_ca

    return load_ca(data_dir)


