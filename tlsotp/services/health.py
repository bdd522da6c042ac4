"""``/health``: is the daemon fit to serve? The rules as plain functions, and the resource.

Each rule looks at the service's state at a given moment and returns the reasons it is not
fit (an empty list: it is). The rules (docs/operations.rst lists them for operators):

- bank server: its CRL is stale (its next update has passed: every client is refused until a
  refresh succeeds); its certificate has expired, or has less than half of ``--renew-before``
  left (renewals are tried from ``--renew-before`` on, so by then they have been failing for a
  while); calls to the TTP (CRL refreshes, renewals) have been failing for longer than
  ``--ttp-unreachable-after``;
- both daemons: the database cannot be written (a real write transaction on the database's own
  worker thread, so that the reactor never waits on SQLite; bounded by ``PROBE_TIMEOUT``).

``HealthResource`` answers 200 ``ok`` or 503 with the reasons on one line.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

__all__ = ["PROBE_TIMEOUT", "HealthResource", "certificate_problems", "crl_problems", "ttp_problems"]

#: Seconds the database probe may take before /health reports the database as not answering.
PROBE_TIMEOUT = 5.0


def crl_problems(next_update: datetime.datetime | None, now: datetime.datetime) -> list[str]:
    """A CRL past its next update (or none at all) validates no client."""
    if next_update is None:
        return ["no CRL"]
    if next_update <= now:
        return [f"the CRL is stale: its next update was due at {next_update:%Y-%m-%d %H:%M:%S} UTC"]
    return []


def certificate_problems(
    not_after: datetime.datetime, now: datetime.datetime, margin: datetime.timedelta
) -> list[str]:
    """An expired certificate, or one with less than ``margin`` left (renewal is overdue)."""
    if not_after <= now:
        return [f"the certificate expired at {not_after:%Y-%m-%d %H:%M:%S} UTC"]
    if not_after - now < margin:
        return [f"the certificate expires at {not_after:%Y-%m-%d %H:%M:%S} UTC and has not been renewed"]
    return []


def ttp_problems(failing_since: float | None, now: float, limit: float) -> list[str]:
    """Calls to the TTP failing without a success since ``failing_since`` (seconds, the
    reactor's clock), for longer than ``limit`` seconds."""
    if failing_since is None or now - failing_since <= limit:
        return []
    return [f"the TTP has been unreachable for {now - failing_since:.0f} s (CRL refresh or renewal failing)"]


class HealthResource(Resource):
    """GET: 200 ``ok``, or 503 and the reasons (``; ``-joined) that ``check()`` fires with."""

    isLeaf = True

    def __init__(self, check: Callable[[], Deferred[list[str]]], clock: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._check = check
        self._clock = clock  # IReactorTime, for the probe's bound

    def render_GET(self, request: Any) -> object:
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)  # the prober went away: answer nobody
        checking = self._check()
        checking.addTimeout(PROBE_TIMEOUT, self._clock)

        def answer(problems: list[str]) -> None:
            if not gone:
                write_health(request, problems)

        def failed(failure: Any) -> None:
            if not gone:
                write_health(request, [f"the health check failed: {failure.getErrorMessage()}"])

        checking.addCallbacks(answer, failed)
        return NOT_DONE_YET


def write_health(request: Any, problems: list[str]) -> None:
    """200 ``ok``, or 503 with the problems on one line."""
    request.setResponseCode(503 if problems else 200)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    text = "; ".join(" ".join(problem.split()) for problem in problems) or "ok"
    request.write(text.encode() + b"\n")
    request.finish()
