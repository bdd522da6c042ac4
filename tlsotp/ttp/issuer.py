"""The TTP's decisions: whether to issue, renew or serve the CRL, as plain code over the store.

Sans-I/O: ``Issuer.handle`` takes one request's bytes and returns the reply to send plus one
log line, and never raises. Everything it commits is committed before it returns, so the
network shell may only send the reply afterwards. The daemon runs it on a single worker thread
(signing and SQLite never block the reactor, and decisions never interleave); tests call it
directly.

Retries and reuse. Enrollment and renewal are idempotent: a request whose reply was lost can
be sent again (same token, or same certificate to renew, and the same public key in the CSR)
and gets the certificate already issued, without another being issued. A renewal that
presents an already renewed certificate with any other key, or a certificate two renewals
back, cannot be a retry: two parties hold that key, so the whole lineage is revoked
(keyCompromise) and the refusal is logged as one warning naming the enrollment.
"""

from __future__ import annotations

import datetime
import sqlite3
from dataclasses import dataclass
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsotp.pki import csr as csr_checks
from tlsotp.pki import der
from tlsotp.pki.builders import Revocation, build_crl, issue_certificate
from tlsotp.pki.keys import PublicKey, check_public_key
from tlsotp.pki.roles import Role
from tlsotp.pki.verify import Clock, utcnow
from tlsotp.ttp import renewal_proof, tokens, wire
from tlsotp.ttp.ca import CertificateAuthority
from tlsotp.ttp.store import (
    CertificateRecord,
    LineageRevocation,
    NotRenewable,
    SerialInUse,
    Store,
    StoreUnavailable,
    TokenPrune,
    TokenUnavailable,
    lineage_end,
    public_key_der,
    renewal_problem,
    serial_text,
)
from tlsotp.ttp.wire import Refusal, RequestRefused

DEFAULT_CERT_DAYS = 7
DEFAULT_CRL_VALIDITY = datetime.timedelta(days=1)
DEFAULT_MAX_LINEAGE = datetime.timedelta(days=90)
SERIAL_ATTEMPTS = 3

_TOKEN_REFUSALS = {
    "unknown": Refusal.unknown_token,
    "spent": Refusal.token_spent,
    "expired": Refusal.token_expired,
    "withdrawn": Refusal.token_withdrawn,
    "mismatch": Refusal.name_mismatch,
}


@dataclass(frozen=True)
class Outcome:
    """The reply to send and the one line to log about it (never a secret, never key material)."""

    reply: wire.Reply
    summary: str
    #: Already said: a refusal during a database outage that was logged once when it began.
    quiet: bool = False

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
        max_lineage: datetime.timedelta = DEFAULT_MAX_LINEAGE,
    ) -> None:
        self.ca = ca
        self.max_lineage = max_lineage
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
        except sqlite3.Error as exc:  # busy, full disk, damaged...: say which
            outcome = refused(Refusal.internal_error, f"the TTP's database {self.store.database_problem(exc)}")
            return Outcome(outcome.reply, f"{outcome.summary} ({exc})")
        except StoreUnavailable as exc:  # a database server down or unreachable: nothing was decided
            outcome = refused(Refusal.internal_error, "the TTP's database is unavailable; try again later")
            return Outcome(outcome.reply, f"{outcome.summary} ({exc.detail})", quiet=exc.quiet)
        except Exception as exc:  # a bug must cost one connection, not the daemon
            outcome = refused(Refusal.internal_error, "the TTP failed to handle the request")
            return Outcome(outcome.reply, f"{outcome.summary} ({type(exc).__name__}: {exc})")

    def handle_group(self, payloads: Sequence[bytes]) -> list[tuple[bool, Outcome]]:
        """``handle`` for each request in turn, in one group transaction (``Store.group``): one
        commit and one fsync for all of them. Returns ``(True, outcome)`` per request (the
        shape ``GroupWorker`` takes); never raises. Nothing of the group is durable before the
        group's COMMIT, so if that fails (or SQLite rolls the group back on its own) every
        request is refused ``internal_error``, whatever it had decided, and the log line says
        what was undone: a requester whose enrollment was undone simply tries again."""
        decided: list[Outcome] = []
        try:
            with self.store.group():
                for payload in payloads:
                    decided.append(self.handle(payload))
                    if not self.store.group_intact():
                        break  # the group is gone: nothing after it may run outside it
        except Exception as exc:  # noqa: BLE001 - the commit's failure refuses the group, never escapes
            if isinstance(exc, sqlite3.Error):
                cause, detail = f"the TTP's database {self.store.database_problem(exc)}", str(exc)
            else:
                cause, detail = "the TTP's database failed to commit", f"{type(exc).__name__}: {exc}"
            outcome = refused(Refusal.internal_error, f"{cause}; nothing of this request was kept")
            undone = [f"; undone: {d.summary}" for d in decided] + [""] * (len(payloads) - len(decided))
            return [(True, Outcome(outcome.reply, f"{outcome.summary} ({detail}){u}")) for u in undone]
        return [(True, outcome) for outcome in decided]

    # Enrollment: token proof, token state, names, CSR; then spend and record in one transaction.

    def enroll(self, request: wire.EnrollRequest) -> Outcome:
        now = self.clock()
        token = self.store.get_token(request.token_id)
        if token is None or token.pruned:  # a pruned token is as good as unknown (store.prune_tokens)
            raise RequestRefused(Refusal.unknown_token, f"no token {request.token_id}")
        # The proof first: without the secret, nobody learns whether a token is spent or expired.
        if not tokens.proof_is_valid(
            token.mac_key, request.proof, request.token_id, request.role, request.name, request.nonce, request.csr_der
        ):
            raise RequestRefused(Refusal.bad_token_proof, f"proof for token {request.token_id} does not verify")
        if token.withdrawn_at is not None:  # never spent: a token is withdrawn only while unspent
            raise RequestRefused(
                Refusal.token_withdrawn,
                f"token {token.token_id} was withdrawn by the TTP's operator at {token.withdrawn_at:%Y-%m-%d %H:%M:%S} UTC",
            )
        if token.spent_at is not None:
            again = self._enrollment_retry(request, token.name, token.role, now)
            if again is not None:
                return Outcome(
                    wire.Issued(self._root_der, again.der),
                    f"re-sent serial {serial_text(again.serial)} to {token.name} ({token.role.value}) for token "
                    f"{token.token_id}: the same enrollment again (same key), its reply was lost",
                )
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
            cert = self._issue(public_key, token.name, token.role, now, not_after_limit=now + self.max_lineage)
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
        try:  # peer DER: whatever it raises (InvalidVersion is no ValueError) is not_renewable
            current = der.load_certificate(request.cert_der)
            current_key = check_public_key(current.public_key())
            serial = serial_text(current.serial_number)
        except Exception:  # noqa: BLE001
            raise RequestRefused(Refusal.not_renewable, "the current certificate is unreadable") from None
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
        enrollment = None if record.enrollment is None else self.store.get_enrollment(record.enrollment)
        lineage_open = enrollment is not None and enrollment.revoked_at is None
        if record.superseded_by is not None and record.revoked_at is None and lineage_open:
            return self._renewal_of_superseded(record, request.csr_der, now)
        problem = renewal_problem(record, enrollment, now, self.max_lineage)
        if problem:
            raise RequestRefused(Refusal.not_renewable, problem)
        assert enrollment is not None
        public_key = self._checked_csr(request.csr_der, record.name)
        for _ in range(SERIAL_ATTEMPTS):
            cert = self._issue(
                public_key, record.name, record.role, now, not_after_limit=lineage_end(enrollment, self.max_lineage)
            )
            try:
                self.store.record_renewal(record.serial, cert, now=now, max_lineage=self.max_lineage)
            except SerialInUse:
                continue
            except NotRenewable as exc:  # revoked by the operator meanwhile
                raise RequestRefused(Refusal.not_renewable, str(exc)) from None
            return Outcome(
                wire.Issued(self._root_der, cert.public_bytes(serialization.Encoding.DER)),
                f"renewed serial {serial} as {serial_text(cert.serial_number)} for {record.name} "
                f"({record.role.value}), enrollment {record.enrollment}",
            )
        raise RequestRefused(Refusal.internal_error, "could not draw an unused serial")

    def _renewal_of_superseded(self, record: CertificateRecord, csr_der: bytes, now: datetime.datetime) -> Outcome:
        """A valid proof for a certificate already renewed: the same renewal again, or key reuse."""
        serial = serial_text(record.serial)
        try:
            public_key: bytes | None = public_key_der(self._checked_csr(csr_der, record.name))
        except RequestRefused:
            public_key = None  # a retry's CSR is as good as the first one was: this is no retry
        try:
            result = self.store.resolve_superseded(record.serial, public_key, now=now)
        except NotRenewable as exc:
            raise RequestRefused(Refusal.not_renewable, str(exc)) from None
        if isinstance(result, CertificateRecord):
            return Outcome(
                wire.Issued(self._root_der, result.der),
                f"re-sent serial {serial_text(result.serial)} to {record.name} ({record.role.value}): the same "
                f"renewal of serial {serial} again (same key), its reply was lost",
            )
        return _reuse_detected(record, result)

    # The CRL: rebuilt when a revocation was recorded (by any process) or half its life is gone.

    def prune_tokens(self, retention: datetime.timedelta) -> TokenPrune:
        """Forget the tokens past ``retention`` by the Issuer's clock (``Store.prune_tokens``)."""
        return self.store.prune_tokens(now=self.clock(), retention=retention)

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

    def _enrollment_retry(
        self, request: wire.EnrollRequest, name: str, role: Role, now: datetime.datetime
    ) -> CertificateRecord | None:
        """The certificate this spent token bought, if this request is that enrollment again."""
        if request.name != name or request.role is not role:
            return None
        try:
            public_key = public_key_der(self._checked_csr(request.csr_der, name))
        except RequestRefused:
            return None
        return self.store.enrollment_retry(request.token_id, public_key, now)

    def _issue(
        self, public_key: PublicKey, name: str, role: Role, now: datetime.datetime, *, not_after_limit: datetime.datetime
    ) -> x509.Certificate:
        return issue_certificate(
            self.ca.key, self.ca.root, public_key, name=name, role=role, days=self.cert_days, now=now,
            not_after_limit=not_after_limit,
        )


def _reuse_detected(record: CertificateRecord, revocation: LineageRevocation) -> Outcome:
    """Refuse, and give the operator one warning line naming the enrollment (no secret in it)."""
    serial = serial_text(record.serial)
    revoked = ", ".join(serial_text(s) for s in revocation.serials) or "none still valid"
    detail = (
        f"serial {serial} was already renewed: a second holder of its key; its enrollment "
        f"{record.enrollment} is revoked, enroll again with a new token"
    )
    summary = (
        f"refused not_renewable: KEY REUSE: serial {serial} of {record.name} ({record.role.value}) was presented "
        f"for renewal again after it was renewed, with another key: two parties hold its key. Enrollment "
        f"{record.enrollment} revoked (key_compromise), serials revoked: {revoked}; the rightful owner needs a new token"
    )
    return Outcome(wire.Refused(Refusal.not_renewable, detail), summary)
