"""Verifying a peer's certificate chain against the pinned TTP root.

Path validation is ``cryptography.x509.verification``; names are checked with
``service_identity``. This module closes the verifier's known gaps itself (see
shared/NOTES.md): it requires ExtendedKeyUsage and checks the role's purpose in the validator,
bounds leaf key strength, matches client names, and checks revocation against a CRL whose own
signature and freshness it verifies first. Every refusal is an ``AlertError`` with the alert a
TLS peer would send.
"""

from __future__ import annotations

import datetime
from typing import Callable, Collection, Sequence

import service_identity
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtensionOID
from service_identity.cryptography import verify_certificate_hostname

from tlsotp.alerts import Alert, AlertError
from tlsotp.pki import der
from tlsotp.pki.keys import UnacceptableKey, check_public_key
from tlsotp.pki.names import check_dns_name
from tlsotp.pki.roles import Role

Clock = Callable[[], datetime.datetime]

# root -> leaf: tlsotp's TTP signs end-entity certificates directly.
MAX_CHAIN_DEPTH = 2

#: Chains remembered as path-validated, per verifier (emptied when full: a bound, not an LRU).
MAX_VALIDATED_CHAINS = 4096

#: How far in the future a CRL's lastUpdate may lie (clock skew between the TTP and us).
CRL_CLOCK_SKEW = datetime.timedelta(minutes=10)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def check_crl_signature(crl: x509.CertificateRevocationList, root: x509.Certificate) -> None:
    """Raise unless the pinned ``root`` issued and signed ``crl`` (true or not for good: check once)."""
    if crl.issuer != root.subject or not crl.is_signature_valid(root.public_key()):  # type: ignore[arg-type]
        raise AlertError(Alert.certificate_unknown, "CRL is not signed by the pinned root")


def check_crl_freshness(crl: x509.CertificateRevocationList, now: datetime.datetime) -> None:
    """Raise unless ``crl`` is current at ``now``: a stale CRL is no CRL (cheap: check per use)."""
    _check_crl_window(crl.next_update_utc, crl.last_update_utc, now)


def _check_crl_window(
    next_update: datetime.datetime | None, last_update: datetime.datetime, now: datetime.datetime
) -> None:
    if next_update is None or next_update < now:
        raise AlertError(Alert.certificate_unknown, "CRL is out of date; fetch a fresh one")
    if last_update > now + CRL_CLOCK_SKEW:
        raise AlertError(Alert.certificate_unknown, "CRL is dated in the future")


def verify_crl(
    crl: x509.CertificateRevocationList, root: x509.Certificate, now: datetime.datetime
) -> x509.CertificateRevocationList:
    """Return ``crl`` if the root signed it and it is current; a stale CRL is no CRL."""
    check_crl_signature(crl, root)
    check_crl_freshness(crl, now)
    return crl


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class PeerVerifier:
    """Validates a leaf-first chain for a peer in ``peer_role``; call it with the chain.

    ``expected_names`` is the server name the client dials (exactly one), or the client names a
    server accepts (``None``: any client the TTP certified). ``crl``, when given, must be the
    pinned root's.

    What does not depend on the time is done once per generation, when the verifier is built or
    its ``crl`` is replaced: the CRL's issuer and signature are checked then (a CRL that fails
    refuses every session, as if it were checked each time), and the path validator's policy,
    store and extension policies are prebuilt. Per session, only what the clock can change is
    decided afresh: the CRL's freshness window, the validity times (the path validator is given
    the session's own time), and the chain itself. The leaf's signature is checked once, by
    the path validator (``cryptography.x509.verification`` verifies every signature on the
    path it builds); the slower stand-alone check runs only to name a refusal ``unknown_ca``.

    A chain that passed (keyed by the exact DER of every certificate sent) is remembered until
    the CRL changes, so a returning peer's chain is not path-validated again: what the path
    validator decided depends only on the chain, the root and the policy, except for time,
    and the leaf's and the root's validity times are still checked on every session, as are
    the CRL's freshness and revocation. ``path_validations`` counts the validator's runs.
    """

    def __init__(
        self,
        root: x509.Certificate,
        peer_role: Role,
        *,
        expected_names: Collection[str] | None = None,
        crl: x509.CertificateRevocationList | None = None,
        clock: Clock = utcnow,
    ) -> None:
        if peer_role is Role.SERVER and (expected_names is None or len(expected_names) != 1):
            raise ValueError("a server is verified against exactly one expected name")
        # Fixed for the verifier's life (read-only): the prebuilt policy and the remembered chains
        # hold for this root, role and names only. Another root means another verifier.
        self._root = root
        self._root_not_before, self._root_not_after = root.not_valid_before_utc, root.not_valid_after_utc
        self._peer_role = peer_role
        # Checked like every name at the edge (full match, no control characters), then compared.
        self._expected_names = None if expected_names is None else frozenset(map(check_dns_name, expected_names))
        self._clock = clock
        self.path_validations = 0
        self._builder = self._policy_builder()
        self._server_name: x509.DNSName | None = None
        if peer_role is Role.SERVER:
            assert self.expected_names is not None
            (name,) = self.expected_names
            self._server_name = x509.DNSName(name)
        self.crl = crl

    @property
    def root(self) -> x509.Certificate:
        return self._root

    @property
    def peer_role(self) -> Role:
        return self._peer_role

    @property
    def expected_names(self) -> frozenset[str] | None:
        return self._expected_names

    @property
    def crl(self) -> x509.CertificateRevocationList | None:
        return self._crl

    @crl.setter
    def crl(self, crl: x509.CertificateRevocationList | None) -> None:
        """A new CRL generation: its signature is checked here, once."""
        self._crl_refusal: AlertError | None = None
        self._validated: dict[tuple[bytes, ...], None] = {}
        #: Per serial number, whether this CRL revokes it (a pure function of the CRL, whose
        #: lookup scans its entries): asked once per generation, bounded like ``_validated``.
        self._revoked: dict[int, bool] = {}
        self._crl_window: tuple[datetime.datetime | None, datetime.datetime] | None = None
        if crl is not None:
            try:
                # Lazily parsed fields of a damaged CRL raise whatever they raise: a refusal too.
                with der.malformed_as(Alert.certificate_unknown, "the CRL is malformed"):
                    check_crl_signature(crl, self.root)
                    # Parsed now, compared with the clock per session.
                    self._crl_window = (crl.next_update_utc, crl.last_update_utc)
            except AlertError as exc:
                self._crl_refusal = exc
        self._crl = crl

    def _policy_builder(self) -> verification.PolicyBuilder:
        wanted, role = self.peer_role.eku, self.peer_role.value

        def require_role_eku(
            policy: verification.Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
        ) -> None:
            # This callback replaces the verifier's own EKU check: test the purpose here.
            if eku is None or wanted not in eku:
                raise ValueError(f"certificate lacks the {role} ExtendedKeyUsage")

        ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().require_present(
            x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, require_role_eku
        )
        return (
            verification.PolicyBuilder()
            .store(verification.Store([self.root]))
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        )

    def __call__(self, chain: Sequence[x509.Certificate]) -> None:
        self.verify(chain)

    def verify(self, chain: Sequence[x509.Certificate]) -> x509.Certificate:
        """Return the verified leaf, or raise ``AlertError``."""
        if not chain:
            raise AlertError(Alert.certificate_required, f"the {self.peer_role.value} sent no certificate")
        leaf, intermediates = chain[0], list(chain[1:])
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("verification time must be timezone-aware UTC")
        if isinstance(chain, der.ParsedChain):
            key = chain.der  # the exact DER the peer sent, as parsed: no re-encoding
        else:
            key = tuple(cert.public_bytes(serialization.Encoding.DER) for cert in chain)
        try:
            self._check_validity(leaf, now)
            if key in self._validated:
                # The one other time-bound thing on the path (the root's times, read once).
                if not self._root_not_before <= now <= self._root_not_after:
                    self._check_validity(self.root, now)  # raises, with the usual message
            else:
                self._check_leaf(leaf, intermediates, now)
                if len(self._validated) >= MAX_VALIDATED_CHAINS:
                    self._validated.clear()
                self._validated[key] = None
        except AlertError:
            # A leaf that is not the root's (or a given CA's) is unknown_ca whatever else is
            # wrong with it; only a refusal pays for this second signature check.
            if not any(_issued_by(leaf, ca) for ca in [self.root, *intermediates]):
                raise AlertError(
                    Alert.unknown_ca, f"{leaf.subject.rfc4514_string()} is not issued by the pinned TTP root"
                ) from None
            raise
        # The path validator accepted root -> leaf (depth 2): the root signed this leaf.
        crl = self._crl
        if crl is not None:
            if self._crl_refusal is not None:
                raise AlertError(self._crl_refusal.alert, self._crl_refusal.detail)
            assert self._crl_window is not None  # read when the CRL was set, or it was refused
            _check_crl_window(*self._crl_window, now)
            serial = leaf.serial_number
            revoked = self._revoked.get(serial)
            if revoked is None:
                revoked = crl.get_revoked_certificate_by_serial_number(serial) is not None
                if len(self._revoked) >= MAX_VALIDATED_CHAINS:
                    self._revoked.clear()
                self._revoked[serial] = revoked
            if revoked:
                raise AlertError(
                    Alert.certificate_revoked,
                    f"{leaf.subject.rfc4514_string()} (serial {leaf.serial_number:x}) is revoked",
                )
        return leaf

    def _check_validity(self, cert: x509.Certificate, now: datetime.datetime) -> None:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            alert = Alert.certificate_expired if cert is not self.root else Alert.bad_certificate
            raise AlertError(
                alert,
                f"{cert.subject.rfc4514_string()} is valid {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now",
            )

    def _check_leaf(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime.datetime
    ) -> None:
        try:
            check_public_key(leaf.public_key())
        except UnacceptableKey as exc:
            raise AlertError(Alert.bad_certificate, f"{leaf.subject.rfc4514_string()}: {exc}") from None
        self._check_names(leaf)  # first, for a plainer message than the path validator's
        self._validate_path(leaf, intermediates, now)

    def _validate_path(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], now: datetime.datetime
    ) -> None:
        builder = self._builder.time(now)
        self.path_validations += 1
        try:
            if self._server_name is not None:
                builder.build_server_verifier(self._server_name).verify(leaf, intermediates)
            else:
                builder.build_client_verifier().verify(leaf, intermediates)
        except verification.VerificationError as exc:
            message = str(exc)
            # A wrong (our validator's message) or missing (the verifier names the OID) purpose.
            about_eku = "ExtendedKeyUsage" in message or ExtensionOID.EXTENDED_KEY_USAGE.dotted_string in message
            alert = Alert.unsupported_certificate if about_eku else Alert.bad_certificate
            raise AlertError(alert, f"{leaf.subject.rfc4514_string()}: {message}") from None

    def _check_names(self, leaf: x509.Certificate) -> None:
        if self.expected_names is None:
            return
        for name in sorted(self.expected_names):
            try:
                verify_certificate_hostname(leaf, name)
            except (service_identity.VerificationError, service_identity.CertificateError, ValueError):
                continue
            return
        wanted = ", ".join(sorted(self.expected_names))
        raise AlertError(
            Alert.bad_certificate, f"{leaf.subject.rfc4514_string()} is not for {wanted}"
        )
