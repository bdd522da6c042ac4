"""The TTP's decisions: whether to issue, renew or serve the CRL, as plain code over the store.

Sans-I/O: ``Issuer.handle`` takes one request's bytes and returns the reply to send plus one
log line, and never raises. Everything it commits is committed before it returns, so the
network shell may only send the reply afterwards. The daemon runs it on a single worker thread
(signing and SQLite never block the reactor, and decisions never interleave); tests call it
directly.
"""

from __future__ import annotations

import datetime
import sqlite3
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from tlsotp.pki import csr as csr_checks
from tlsotp.pki.authority import Revocation, build_crl, issue_certificate
from tlsotp.pki.keys import PublicKey, UnacceptableKey, check_public_key
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import Clock, utcnow
from tlsotp.ttp import renewal_proof, tokens, wire
from tlsotp.ttp.ca import CertificateAuthority
from tlsotp.ttp.store import NotRenewable, SerialInUse, Store, TokenUnavailable, renewal_problem, serial_text
from tlsotp.ttp.wire import Refusal, RequestRefused

DEFAULT_CERT_DAYS = 7
DEFAULT_CRL_VALIDITY = datetime.timedelta(days=1)
SERIAL_ATTEMPTS = 3

_TOKEN_REFUSALS = {
    "unknown": Refusal.unknown_token,
    "spent": Refusal.token_spent,
    "expired": Refusal.token_expired,
    "mismatch": Refusal.name_mismatch,
}


@dataclass(frozen=True)
class Outcome:
    """The reply to send and the one line to log about it (never a secret, never key material)."""

    reply: wire.Reply
    summary: str

    @property
    def refusal(self) -> Refusal | None:
        return self.reply.code if isinstance(self.reply, wire.Refused) else None


def refused(code: Refusal, detail: str) -> Outcome:
    return Outcome(wire.Refused(code, detail), f"refused {code.name}: {detail}")


class Issuer:
    def __init__(
        self,
        ca: CertificateAuthority,
        store: Store,
        *,
        cert_days: int = DEFAULT_CERT_DAYS,
        crl_validity: datetime.timedelta = DEFAULT_CRL_VALIDITY,
        clock: Clock = utcnow,
        timestamp_window: int = renewal_proof.TIMESTAMP_WINDOW_SECONDS,
    ) -> None:
        self.ca = ca
        self.store = store
        self.cert_days = cert_days
        self.crl_validity = crl_validity
        self.clock = clock
        self.timestamp_window = timestamp_window
        self._root_der = ca.root_der

    def handle(self, payload: bytes) -> Outcome:
        try:
            request = wire.decode_request(payload)
            if isinstance(request, wire.EnrollRequest):
                return self.enroll(request)
            if isinstance(request, wire.RenewRequest):
                return self.renew(request)
            return self.crl()
        except RequestRefused as exc:
            return refused(exc.code, exc.detail)
        except sqlite3.OperationalError as exc:
            outcome = refused(Refusal.internal_error, "the TTP's database is busy; try again")
            return Outcome(outcome.reply, f"{outcome.summary} ({exc})")
        except Exception as exc:  # a bug must cost one connection, not the daemon
            outcome = refused(Refusal.internal_error, "the TTP failed to handle the request")
            return Outcome(outcome.reply, f"{outcome.summary} ({type(exc).__name__}: {exc})")

    # Enrollment: token proof, token state, names, CSR; then spend and record in one transaction.

    def enroll(self, request: wire.EnrollRequest) -> Outcome:
        now = self.clock()
        token = self.store.get_token(request.token_id)
        if token is None:
            raise RequestRefused(Refusal.unknown_token, f"no token {request.token_id}")
        # The proof first: without the secret, nobody learns whether a token is spent or expired.
        if not tokens.proof_is_valid(
            token.mac_key, request.proof, request.token_id, request.role, request.name, request.nonce, request.csr_der
        ):
            raise RequestRefused(Refusal.bad_token_proof, f"proof for token {request.token_id} does not verify")
        if token.spent_at is not None:
            raise RequestRefused(
                Refusal.token_spent, f"token {token.token_id} was spent at {token.spent_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        if token.expires_at <= now:
            raise RequestRefused(
                Refusal.token_expired, f"token {token.token_id} expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            )
        if request.name != token.name:
            raise RequestRefused(Refusal.name_mismatch, f"token {token.token_id} is for {token.name}, not {request.name}")
        if request.role is not token.role:
            raise RequestRefused(
                Refusal.role_mismatch, f"token {token.token_id} is for a {token.role.value}, not a {request.role.value}"
            )
        public_key = self._checked_csr(request.csr_der, token.name)
        for _ in range(SERIAL_ATTEMPTS):
            cert = self._issue(public_key, token.name, token.role, now)
            try:
                self.store.record_enrollment(token.token_id, cert, token.role, token.name, now=now)
            except SerialInUse:
                continue
            except TokenUnavailable as exc:  # spent by a concurrent request, or expired meanwhile
                raise RequestRefused(_TOKEN_REFUSALS[exc.reason], f"token {token.token_id} is {exc.reason}") from None
            return Outcome(
                wire.Issued(self._root_der, cert.public_bytes(serialization.Encoding.DER)),
                f"issued serial {serial_text(cert.serial_number)} to {token.name} ({token.role.value}) "
                f"for token {token.token_id}",
            )
        raise RequestRefused(Refusal.internal_error, "could not draw an unused serial")

    # Renewal: the current certificate, a signature by its key, a fresh timestamp; no token.

    def renew(self, request: wire.RenewRequest) -> Outcome:
        now = self.clock()
        try:
            current = x509.load_der_x509_certificate(request.cert_der)
            current_key = check_public_key(current.public_key())
        except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm, UnacceptableKey):  # the middle two are no ValueError
            raise RequestRefused(Refusal.not_renewable, "the current certificate is unreadable") from None
        serial = serial_text(current.serial_number)
        record = self.store.get_certificate(current.serial_number)
        if record is None or record.der != request.cert_der:
            raise RequestRefused(Refusal.not_renewable, f"serial {serial} was not issued by this TTP")
        if not renewal_proof.renewal_signature_is_valid(
            current_key, request.signature, request.cert_der, request.csr_der, request.nonce, request.timestamp
        ):
            raise RequestRefused(Refusal.bad_signature, f"renewal signature for serial {serial} does not verify")
        if not renewal_proof.timestamp_is_fresh(request.timestamp, now.timestamp(), self.timestamp_window):
            raise RequestRefused(
                Refusal.bad_timestamp,
                f"renewal request time is more than {self.timestamp_window} s from the TTP's clock",
            )
        problem = renewal_problem(record, now)
        if problem:
            raise RequestRefused(Refusal.not_renewable, problem)
        public_key = self._checked_csr(request.csr_der, record.name)
        for _ in range(SERIAL_ATTEMPTS):
            cert = self._issue(public_key, record.name, record.role, now)
            try:
                self.store.record_renewal(record.serial, cert, now=now)
            except SerialInUse:
                continue
            except NotRenewable as exc:  # renewed or revoked by a concurrent request
                raise RequestRefused(Refusal.not_renewable, str(exc)) from None
            return Outcome(
                wire.Issued(self._root_der, cert.public_bytes(serialization.Encoding.DER)),
                f"renewed serial {serial} as {serial_text(cert.serial_number)} for {record.name} ({record.role.value})",
            )
        raise RequestRefused(Refusal.internal_error, "could not draw an unused serial")

    # The CRL: rebuilt when a revocation was recorded (by any process) or half its life is gone.

    def crl(self) -> Outcome:
        now = self.clock()
        stored = self.store.current_crl()
        if (
            stored is None
            or stored.generation != self.store.revocation_generation()
            or now - stored.built_at >= self.crl_validity / 2
        ):
            stored = self.store.rebuild_crl(self._sign_crl, now=now)
        if len(stored.der) > wire.MAX_CRL_BYTES:
            raise RequestRefused(Refusal.internal_error, "the CRL has outgrown the protocol's bound")
        return Outcome(wire.CRLReply(self._root_der, stored.der), f"served CRL number {stored.number}")

    def _sign_crl(self, revocations: list[Revocation], number: int) -> bytes:
        crl = build_crl(
            self.ca.key, self.ca.root, revocations, now=self.clock(), next_update=self.crl_validity, crl_number=number
        )
        return crl.public_bytes(serialization.Encoding.DER)

    def _checked_csr(self, csr_der: bytes, name: str) -> PublicKey:
        try:
            return csr_checks.check_csr(csr_checks.load_csr(csr_der), name)
        except csr_checks.CSRBadSignature as exc:
            raise RequestRefused(Refusal.bad_signature, str(exc)) from None
        except csr_checks.CSRWeakKey as exc:
            raise RequestRefused(Refusal.weak_key, str(exc)) from None
        except csr_checks.CSRNameMismatch as exc:
            raise RequestRefused(Refusal.name_mismatch, str(exc)) from None
        except csr_checks.CSRRefused as exc:
            raise RequestRefused(Refusal.bad_csr, str(exc)) from None

    def _issue(self, public_key: PublicKey, name: str, role: Role, now: datetime.datetime) -> x509.Certificate:
        return issue_certificate(self.ca.key, self.ca.root, public_key, name=name, role=role, days=self.cert_days, now=now)
