"""The requester's side of enrollment, renewal and CRL fetching, for commands and daemons alike.

Every reply is checked against the pinned root before anything is written: the root it carries
must match the pin, the certificate must chain to it for the requested role and name, and must
certify exactly the key we generated. So a man in the middle on the TTP link can neither make
us trust another CA nor hand us a certificate for someone else's key.

Failures are typed: ``EnrollmentRefused`` (the TTP said no, with its refusal code),
``AlertError`` (the reply failed verification, e.g. ``unknown_ca``), ``TTPUnavailable``
(connection, timeout), ``NotEnrolled`` / ``AlreadyEnrolled`` (the data dir's state),
``ValueError`` (a malformed token or name), ``PEMError`` (broken files).

Retries: a new key is written to ``key.pem.next`` before the request goes out, and a later
enrollment or renewal in the same data dir reuses that pending key. The TTP answers the same
token (or the same certificate to renew) with the same key by sending the certificate it
already issued, so re-running a command whose reply was lost succeeds and costs no token.
"""

from __future__ import annotations

import datetime
import secrets
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime, IStreamClientEndpoint
from twisted.internet.threads import deferToThreadPool

from tlsotp.alerts import Alert, AlertError, TLSOTPError
from tlsotp.pki import der, pem
from tlsotp.pki.credentials import (
    CA_FILE,
    CERT_FILE,
    CRL_FILE,
    KEY_FILE,
    NEXT_KEY_FILE,
    Credentials,
    RootPin,
    certified_name,
    certified_role,
    load_credentials,
    pending_key,
    spki,
    write_credentials,
    write_pending_key,
)
from tlsotp.pki.csr import build_csr
from tlsotp.pki.keys import KeyType, PrivateKey, describe_key, generate_private_key, parse_key_type
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import PeerVerifier, utcnow, verify_crl
from tlsotp.services.ttp_client import BlockingTTP, TTPUnavailable, exchange
from tlsotp.ttp import tokens, wire
from tlsotp.ttp.renewal_proof import sign_renewal
from tlsotp.ttp.wire import Refusal

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "CRL_FILE",
    "KEY_FILE",
    "AlreadyEnrolled",
    "Credentials",
    "EnrollmentError",
    "EnrollmentRefused",
    "NotEnrolled",
    "RootPin",
    "TTPUnavailable",
    "enroll",
    "fetch_crl",
    "load_credentials",
    "renew",
]

DEFAULT_TIMEOUT = 30.0

#: Where the TTP is: an endpoint string (``tcp:host=...:port=7000``) or an endpoint object. The
#: reactor must provide what that endpoint needs (``IReactorTCP`` for ``tcp:``) besides its clock.
#: A ``BlockingTTP`` is reached with a blocking socket (a daemon's start-up, before its reactor runs).
TTPEndpoint = str | IStreamClientEndpoint | BlockingTTP


class EnrollmentError(TLSOTPError):
    """The base of the requester's own failures (not verification alerts)."""


class EnrollmentRefused(EnrollmentError):
    """The TTP refused the request; ``code`` says why."""

    def __init__(self, code: Refusal, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self) -> str:
        return f"the TTP refused: {self.code.name}: {self.detail}"


class NotEnrolled(EnrollmentError):
    pass


class AlreadyEnrolled(EnrollmentError):
    pass


def enroll(
    reactor: IReactorTime,
    ttp: TTPEndpoint,
    *,
    data_dir: Path,
    pin: RootPin,
    token: str,
    name: str,
    role: Role,
    key_type: KeyType = KeyType.EC_P256,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[Credentials]:
    """Make (or reuse the pending) key and a CSR, prove the token, verify the reply, write the files.

    The key is kept in ``key.pem.next`` before the request is sent: if the reply is lost, calling
    this again with the same token reuses it and gets the certificate the TTP already issued.
    """
    return Deferred.fromCoroutine(
        _enroll(reactor, ttp, Path(data_dir), pin, token, name, role, key_type, timeout)
    )


async def _enroll(
    reactor: IReactorTime,
    ttp: TTPEndpoint,
    data_dir: Path,
    pin: RootPin,
    token_text: str,
    name_text: str,
    role: Role,
    key_type: KeyType,
    timeout: float,
) -> Credentials:
    token = tokens.Token.parse(token_text)
    name = check_dns_name(name_text)
    if (data_dir / CERT_FILE).exists():
        raise AlreadyEnrolled(f"{data_dir} is already enrolled ({CERT_FILE} exists); renew instead")
    key = pending_key(data_dir)
    if key is None or parse_key_type(describe_key(key)) is not key_type:
        key = await _generate_key(reactor, key_type)
        write_pending_key(data_dir, key)
    csr_der = build_csr(key, name).public_bytes(serialization.Encoding.DER)
    nonce = secrets.token_bytes(wire.NONCE_BYTES)
    proof = tokens.enrollment_proof(token.mac_key(), token.token_id, role, name, nonce, csr_der)
    reply = await exchange(reactor, ttp, wire.EnrollRequest(token.token_id, role, name, nonce, csr_der, proof), timeout)
    root, leaf = accept_issued(reply, pin, key, name, role, utcnow())
    credentials = Credentials(key, [leaf], root)
    write_credentials(data_dir, credentials, new_key=True)
    return credentials


def renew(
    reactor: IReactorTime,
    ttp: TTPEndpoint,
    *,
    data_dir: Path,
    new_key: bool = False,
    key_type: KeyType | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[Credentials]:
    """Prove possession of the current key and get a fresh certificate; the pin is ca.pem.

    A pending key (``key.pem.next``, left by a renewal whose reply was lost) is certified
    again, with or without ``new_key``: the TTP then answers with the certificate it already
    issued for it. Asking for the old key instead would look like a second holder of the key.
    """
    return Deferred.fromCoroutine(_renew(reactor, ttp, Path(data_dir), new_key, key_type, timeout))


async def _renew(
    reactor: IReactorTime, ttp: TTPEndpoint, data_dir: Path, new_key: bool, key_type: KeyType | None, timeout: float
) -> Credentials:
    current = load_credentials(data_dir)
    if current is None:
        raise NotEnrolled(f"{data_dir} is not enrolled ({CERT_FILE} is missing); enroll with a token first")
    current_type = parse_key_type(describe_key(current.key))
    if key_type is not None and key_type is not current_type and not new_key:
        raise ValueError(f"the current key is {current_type.value}; a different key type needs a new key")
    name, role = certified_name(current.leaf), certified_role(current.leaf)
    key = pending_key(data_dir)
    if key is not None:
        pending_type = parse_key_type(describe_key(key))
        if key_type is not None and key_type is not pending_type:
            raise ValueError(
                f"{data_dir / NEXT_KEY_FILE} holds the {pending_type.value} key of a renewal whose reply never came; "
                f"renew without --key-type to finish that renewal first"
            )
        new_key = True
    elif new_key:
        key = await _generate_key(reactor, key_type or current_type)
        write_pending_key(data_dir, key)
    else:
        key = current.key
    cert_der = current.leaf.public_bytes(serialization.Encoding.DER)
    csr_der = build_csr(key, name).public_bytes(serialization.Encoding.DER)
    nonce = secrets.token_bytes(wire.NONCE_BYTES)
    timestamp = int(time.time())
    signature = sign_renewal(current.key, cert_der, csr_der, nonce, timestamp)
    reply = await exchange(reactor, ttp, wire.RenewRequest(cert_der, csr_der, nonce, timestamp, signature), timeout)
    root, leaf = accept_issued(reply, current.root, key, name, role, utcnow())
    # A replayed older reply for the same key would pass the checks above: insist on a newer one.
    if leaf.serial_number == current.leaf.serial_number or leaf.not_valid_before_utc < current.leaf.not_valid_before_utc:
        raise AlertError(Alert.bad_certificate, "the TTP returned the current or an older certificate")
    credentials = Credentials(key, [leaf], root)
    write_credentials(data_dir, credentials, new_key=new_key)
    return credentials


def fetch_crl(
    reactor: IReactorTime,
    ttp: TTPEndpoint,
    *,
    pin: RootPin | x509.Certificate,
    data_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Deferred[x509.CertificateRevocationList]:
    """Fetch the CRL, verify it against the pinned root, and write data_dir/crl.pem if given."""
    return Deferred.fromCoroutine(_fetch_crl(reactor, ttp, pin, None if data_dir is None else Path(data_dir), timeout))


async def _fetch_crl(
    reactor: IReactorTime, ttp: TTPEndpoint, pin: RootPin | x509.Certificate, data_dir: Path | None, timeout: float
) -> x509.CertificateRevocationList:
    reply = await exchange(reactor, ttp, wire.CRLRequest(), timeout)
    now = utcnow()
    root, crl = accept_crl(reply, pin, now)
    if data_dir is not None:
        _refuse_rollback(crl, data_dir / CRL_FILE, root, now)
        pem.write_crl(data_dir / CRL_FILE, crl)
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return -1


def _refuse_rollback(crl: x509.CertificateRevocationList, path: Path, root: x509.Certificate, now: datetime.datetime) -> None:
    """A replayed older CRL could hide a recent revocation: never go back in CRL numbers."""
    if not path.exists():
        return
    try:
        stored = pem.load_crl(path)
        verify_crl(stored, root, now)
    except (pem.PEMError, AlertError):
        return  # stale, foreign or broken: nothing to compare with
    if crl_number(crl) < crl_number(stored):
        raise AlertError(
            Alert.certificate_unknown,
            f"the TTP served CRL number {crl_number(crl)}, older than the stored {crl_number(stored)}",
        )


def accept_crl(
    reply: wire.Reply, pin: RootPin | x509.Certificate, now: datetime.datetime
) -> tuple[x509.Certificate, x509.CertificateRevocationList]:
    """The (root, CRL) of a ``crl`` reply, if the pinned root signed it and it is current.

    The one place the requester decodes a CRL reply: unparseable DER is decode_error, and
    whatever a lazily parsed field of it raises is certificate_unknown, never a traceback.
    """
    if isinstance(reply, wire.Refused):
        raise EnrollmentRefused(reply.code, reply.detail)
    if not isinstance(reply, wire.CRLReply):
        raise AlertError(Alert.unexpected_message, "the TTP answered a CRL request with a certificate")
    root = _load_certificate(reply.root_der, "root")
    with der.malformed_as(Alert.unknown_ca, "the TTP sent a malformed root"):
        _check_root(pin, root)
    try:
        crl = der.load_crl(reply.crl_der)
    except der.MalformedDER:
        raise AlertError(Alert.decode_error, "the TTP sent an unreadable CRL") from None
    with der.malformed_as(Alert.certificate_unknown, "the TTP sent a malformed CRL"):
        verify_crl(crl, root, now)
        crl_number(crl)  # read later (rollback check): it must parse now
    return root, crl


def accept_issued(
    reply: wire.Reply,
    pin: RootPin | x509.Certificate,
    key: PrivateKey,
    name: str,
    role: Role,
    now: datetime.datetime,
) -> tuple[x509.Certificate, x509.Certificate]:
    """The (root, leaf) of an ``issued`` reply, if it is exactly what we asked the pinned CA for.

    The one place the requester decodes an ``issued`` reply: unparseable DER is decode_error,
    and whatever a lazily parsed field of it raises is bad_certificate, never a traceback.
    """
    if isinstance(reply, wire.Refused):
        raise EnrollmentRefused(reply.code, reply.detail)
    if not isinstance(reply, wire.Issued):
        raise AlertError(Alert.unexpected_message, "the TTP answered with a CRL instead of a certificate")
    root = _load_certificate(reply.root_der, "root")
    leaf = _load_certificate(reply.cert_der, "certificate")
    with der.malformed_as(Alert.bad_certificate, "the TTP sent a malformed certificate"):
        _check_issued(root, leaf, pin, key, name, role, now)
    return root, leaf


def _check_issued(
    root: x509.Certificate,
    leaf: x509.Certificate,
    pin: RootPin | x509.Certificate,
    key: PrivateKey,
    name: str,
    role: Role,
    now: datetime.datetime,
) -> None:
    _check_root(pin, root)
    PeerVerifier(root, role, expected_names=[name], clock=lambda: now).verify([leaf])
    if spki(leaf.public_key()) != spki(key.public_key()):
        raise AlertError(Alert.bad_certificate, "the issued certificate is not for the key we sent")
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if certified_name(leaf) != name or common_names != [name]:
        raise AlertError(Alert.bad_certificate, f"the issued certificate is not for exactly {name}")
    if certified_role(leaf) is not role:
        raise AlertError(Alert.unsupported_certificate, f"the issued certificate is not for a {role.value}")


def _check_root(pin: RootPin | x509.Certificate, root: x509.Certificate) -> None:
    if isinstance(pin, RootPin):
        pin.check(root)
    else:
        RootPin.from_certificate(pin).check(root)


def _load_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        return der.load_certificate(data)
    except der.MalformedDER:  # a bad version field too (InvalidVersion)
        raise AlertError(Alert.decode_error, f"the TTP sent an unreadable {what}") from None


async def _generate_key(reactor: IReactorTime, key_type: KeyType) -> PrivateKey:
    """RSA generation takes up to seconds: off the reactor thread when the reactor has threads
    and runs (before it runs, as in a daemon's start-up, there is no reactor thread to spare)."""
    if key_type.value.startswith("rsa") and IReactorThreads.providedBy(reactor) and getattr(reactor, "running", False):
        key: PrivateKey = await deferToThreadPool(reactor, reactor.getThreadPool(), generate_private_key, key_type)
        return key
    return generate_private_key(key_type)
