"""The daemons' ``--listen`` strings as server endpoints, every mistake a ``ValueError``.

``serverFromString`` raises a ``ValueError`` for most bad strings, but the ``systemd:`` endpoint
(socket activation) looks its socket up at once: with no socket passed (started outside its
``.socket`` unit, or without ``LISTEN_FDNAMES``, which Twisted requires beside ``LISTEN_FDS``
and ``LISTEN_PID``) it raises ``IndexError``/``KeyError``, and an unknown ``domain=`` an
``AttributeError``. Those become one clear line here instead of a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

__all__ = ["listen_endpoint"]

NO_SYSTEMD_SOCKET = (
    "no such socket passed by systemd to this process (start it through its .socket unit; "
    "it needs LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set for it)"
)


def listen_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """The endpoint ``description`` names; ``ValueError`` with the reason if it names none."""
    try:
        return serverFromString(reactor, description)  # type: ignore[no-any-return, no-untyped-call]
    except (IndexError, KeyError):
        if description.strip().startswith("systemd:"):
            raise ValueError(NO_SYSTEMD_SOCKET) from None
        raise ValueError("malformed endpoint description") from None
    except AttributeError:  # systemd:domain=NAME where socket.AF_NAME does not exist
        raise ValueError("unknown domain= (INET, INET6 or UNIX)") from None
