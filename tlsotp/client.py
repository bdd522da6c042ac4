"""tlsotp's client as a library: what code that embeds the client imports.

::

    from tlsotp.client import ClientSettings, enroll, request_otp, confirm_otp, PeerRefused

Enroll once (``enroll``, into a data dir), load the credentials (``load_credentials``), fetch
and verify the CRL (``fetch_crl``), build a ``ClientSettings``, then ``request_otp`` /
``confirm_otp`` as often as needed, or let ``run_client`` do all of it from a
``ClientRunSettings``. Every call returns a Deferred (await it in an ``async def``); every
server is an endpoint string or an ``IStreamClientEndpoint``; cancelling a session's Deferred
ends the session (see ``tlsotp.services.otp_client``). README.rst's "Python API" shows it whole.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError

from tlsotp.alerts import (
    Alert,
    AlertError,
    LocalRefusal,
    PeerRefused,
    PeerUnreachable,
    SessionTruncated,
    TLSOTPError,
)
from tlsotp.handshake import DEFAULT_SUITES, Suite, TraceRecord
from tlsotp.otp.messages import ConfirmResult, ConfirmStatus, OTPGrant
from tlsotp.pki.credentials import Credentials, RootPin, load_credentials
from tlsotp.pki.keys import KeyType
from tlsotp.pki.roles import Role
from tlsotp.services.client_run import ClientRun, ClientRunSettings, run_client
from tlsotp.services.enrollment import (
    AlreadyEnrolled,
    EnrollmentError,
    EnrollmentRefused,
    NotEnrolled,
    TTPUnavailable,
    enroll,
    fetch_crl,
    renew,
)
from tlsotp.services.otp_client import (
    ClientSettings,
    ServerEndpoint,
    SessionResult,
    confirm_otp,
    request_otp,
    request_otp_message,
)

__all__ = [
    "DEFAULT_SUITES",
    "Alert",
    "AlertError",
    "AlreadyEnrolled",
    "CancelledError",
    "ClientRun",
    "ClientRunSettings",
    "ClientSettings",
    "ConfirmResult",
    "ConfirmStatus",
    "Credentials",
    "EnrollmentError",
    "EnrollmentRefused",
    "KeyType",
    "LocalRefusal",
    "NotEnrolled",
    "OTPGrant",
    "PeerRefused",
    "PeerUnreachable",
    "Role",
    "RootPin",
    "ServerEndpoint",
    "SessionResult",
    "SessionTruncated",
    "Suite",
    "TLSOTPError",
    "TTPUnavailable",
    "TraceRecord",
    "confirm_otp",
    "enroll",
    "fetch_crl",
    "load_credentials",
    "renew",
    "request_otp",
    "request_otp_message",
    "run_client",
]
