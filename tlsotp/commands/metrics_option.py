"""``--metrics ENDPOINT``, shared by both daemons: the option's table row and its check.

prometheus-client is an extra (``tlsotp[metrics]``): it is imported only when ``--metrics`` is
given, and its absence is one line and exit 1 while parsing options, before twistd starts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString

from tlsotp.services.shutdown import refuse_to_start

__all__ = ["METRICS_OPTION", "check_metrics_option"]

METRICS_OPTION: list[Any] = [
    "metrics", None, None,
    "Serve /metrics (Prometheus text format) and /health on this endpoint, e.g. tcp:9464:interface=127.0.0.1 "
    "(default: off; needs tlsotp[metrics]; see docs/operations.rst).",
]


def check_metrics_option(program: str, endpoint: str | None) -> None:
    """Refuse to start (one line, exit 1) when ``--metrics`` cannot work: no prometheus-client,
    or an endpoint string that does not parse."""
    if endpoint is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        refuse_to_start(program, "--metrics needs prometheus-client, which is not installed: install tlsotp[metrics]")
    from twisted.internet import reactor

    try:
        serverFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        refuse_to_start(program, f"bad --metrics endpoint {endpoint!r}: {exc}")
