"""Loading X.509 DER that came from someone else: every failure is one ``MalformedDER``.

cryptography raises ``ValueError`` for most malformed DER, but not for all of it: a version field
outside v1/v3 (certificates) or v1 (CSRs, CRLs) is ``x509.InvalidVersion``, which is *not* a
``ValueError``, and fields parsed lazily later (extensions, names, public keys) can raise
``DuplicateExtension``, ``UnsupportedGeneralNameType``, ``UnsupportedAlgorithm`` or
``TypeError``. So the loaders here catch everything the loader raises, and ``malformed_as``
turns whatever a later look at a peer's object raises into the layer's own typed refusal. Each
layer (the handshake, the TTP, the requester) calls these at one place and picks its alert or
refusal there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from cryptography import x509

from tlsotp.alerts import Alert, AlertError

T = TypeVar("T")


class MalformedDER(ValueError):
    """DER a peer sent that does not parse as what it claims to be."""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def load_certificate(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except Exception as exc:  # noqa: BLE001 - InvalidVersion is not a ValueError
        raise MalformedDER(f"certificate is not valid DER X.509 ({describe(exc)})") from None


class ParsedChain(tuple[x509.Certificate, ...]):
    """A peer's certificates (leaf first), each parsed from the DER in ``der`` at its index.

    A plain tuple of certificates everywhere else; a verifier that remembers chains by their
    exact DER reads ``der`` instead of re-encoding every certificate (``public_bytes``: about
    11 us a certificate). Built only by ``load``, from the bytes it parses, so the two agree.
    """

    _der: tuple[bytes, ...]

    @classmethod
    def load(cls, ders: Sequence[bytes]) -> ParsedChain:
        """Parse each entry in order (the first malformed one raises ``MalformedDER``)."""
        wire = tuple(bytes(entry) for entry in ders)
        chain = cls(load_certificate(entry) for entry in wire)
        chain._der = wire
        return chain

    @property
    def der(self) -> tuple[bytes, ...]:
        """The exact bytes each certificate was parsed from."""
        return self._der


def by_leaf_der(memo: dict[bytes, T], bound: int, chain: ParsedChain, compute: Callable[[x509.Certificate], T]) -> T:
    """``compute(chain[0])``, remembered in ``memo`` by the leaf's wire DER (already hashed: the
    verifier's cache key), where an lru_cache on the ``x509.Certificate`` hashes the parsed
    certificate (about 4 us a lookup). Bounded: emptied when it holds ``bound`` answers. A
    ``compute`` that raises (a refusal) is not remembered."""
    wire = chain.der[0]
    known = memo.get(wire)
    if known is None:
        known = compute(chain[0])
        if len(memo) >= bound:
            memo.clear()
        memo[wire] = known
    return known


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_der_x509_csr(der)
    except Exception as exc:  # noqa: BLE001 - InvalidVersion is not a ValueError
        raise MalformedDER(f"not a DER certificate signing request ({describe(exc)})") from None


def load_crl(der: bytes) -> x509.CertificateRevocationList:
    try:
        return x509.load_der_x509_crl(der)
    except Exception as exc:  # noqa: BLE001 - InvalidVersion is not a ValueError
        raise MalformedDER(f"CRL is not valid DER ({describe(exc)})") from None


@contextmanager
def malformed_as(alert: Alert, what: str) -> Iterator[None]:
    """Inside, any exception but an ``AlertError`` becomes ``AlertError(alert)`` about ``what``.

    For code that reads a peer's parsed object: its lazily parsed fields can turn out malformed
    at any access, with any of several exception types.
    """
    try:
        yield
    except AlertError:
        raise
    except Exception as exc:  # noqa: BLE001 - peer input must never escape as a traceback
        raise AlertError(alert, f"{what}: {describe(exc)}") from None
