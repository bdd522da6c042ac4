"""Getting a party's credentials: reuse the ones in its data dir, or enroll with a token."""

from __future__ import annotations

import datetime
from pathlib import Path

from twisted.internet.interfaces import IReactorTime

from tlsotp.alerts import Alert, AlertError
from tlsotp.pki.credentials import certified_name
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import utcnow
from tlsotp.services.enrollment import CERT_FILE, Credentials, RootPin, TTPEndpoint, enroll, load_credentials

EXPIRED_CERT_FILE = "cert.pem.expired"


class StartupError(Exception):
    """A party cannot start; the message is the one line the operator sees."""


def check_can_enroll(data_dir: Path, *, token: str | None, pin: RootPin | None, name: str | None) -> None:
    """Raise StartupError unless enrolling has what it needs; callable before the reactor runs."""
    if not token:
        raise StartupError(f"{data_dir} holds no certificate yet: start with --token-file FILE to enroll")
    if pin is None:
        raise StartupError("enrolling needs the TTP root pinned: give --ca-fingerprint or --ca-cert")
    if not name:
        raise StartupError("enrolling needs --name, the name the token was minted for")


async def obtain_credentials(
    reactor: IReactorTime,
    *,
    data_dir: Path,
    ttp: TTPEndpoint,
    pin: RootPin | None,
    token: str | None,
    name: str | None,
    role: Role,
    key_type: KeyType,
    timeout: float,
    now: datetime.datetime | None = None,
) -> Credentials:
    """The party's key and certificate: from ``data_dir`` if enrolled and current, else enroll."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    credentials = load_credentials(data_dir)
    if credentials is not None:
        if pin is not None:
            pin.check(credentials.root)
        leaf = credentials.chain[0]
        if name is not None and certified_name(leaf) != name:
            raise StartupError(f"{data_dir} holds a certificate for {certified_name(leaf)}, not {name}")
        if (now or utcnow()) < leaf.not_valid_after_utc:
            return credentials
        if token is None:
            raise StartupError(
                f"the certificate in {data_dir} expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
                "ask the TTP operator for a new token and start with --token-file FILE"
            )
    check_can_enroll(data_dir, token=token, pin=pin, name=name)
    assert token is not None and pin is not None and name is not None
    if credentials is not None:
        # Expired, and a new token given: keep the old certificate for the record, and enroll
        # afresh (enrollment refuses a data dir that holds a certificate).
        (data_dir / CERT_FILE).replace(data_dir / EXPIRED_CERT_FILE)
    try:
        return await enroll(
            reactor, ttp, data_dir=data_dir, pin=pin, token=token, name=name, role=role,
            key_type=key_type, timeout=timeout,
        )
    except AlertError as exc:
        if exc.alert is Alert.unknown_ca:
            raise StartupError(f"the TTP at {ttp} is not the pinned one: {exc.detail}") from None
        raise
