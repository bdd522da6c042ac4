"""Telling a supervisor how start-up went: systemd's ``sd_notify`` protocol, in a few lines.

Under ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` (a path, or an abstract-namespace name
starting with ``@``) and waits for one datagram saying ``READY=1`` before it counts the unit as
started, so units ordered after it (and ``systemctl start``) wait until the daemon really
serves. ``STOPPING=1`` says a stop has begun; ``STATUS=`` is the one line ``systemctl status``
shows. Without ``$NOTIFY_SOCKET`` every call here does nothing.

The twistd tap modules (``tlsotp.commands.server_daemon``, ``ttp_daemon``) send ``READY=1`` and
``STOPPING=1``: the process is theirs, and an embedder of ``build_service`` speaks for its own.
``shutdown.refuse_to_start`` and ``shutdown.fail_late`` send a failed start's reason.

A notification is a courtesy to the supervisor, never a reason to fail: a socket that is gone
or full is logged once and otherwise ignored. A status is one line of at most
``MAX_STATUS`` characters (a reason with a newline in it cannot add a field such as
``READY=1``). The environment is left as it is: nothing here spawns children.
"""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger

__all__ = ["MAX_STATUS", "notify", "notify_failed", "notify_ready", "notify_stopping"]

log = Logger()

#: Characters of a STATUS= line kept; systemd shows it in ``systemctl status``.
MAX_STATUS = 500
#: Seconds a send may wait for room in the supervisor's queue (a datagram is sent whole or not).
SEND_TIMEOUT = 1.0

_warned = False
_failed = False


def _one_line(text: str) -> str:
    flat = "".join(c if c.isprintable() else " " for c in text).strip()
    return flat if len(flat) <= MAX_STATUS else flat[: MAX_STATUS - 3] + "..."


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; whether it was sent."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # Linux's abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto("\n".join(fields).encode("utf-8"), address)
    except (OSError, ValueError) as exc:  # gone, refused, full, or not a socket address at all
        if not _warned:
            _warned = True
            log.warn(
                "cannot notify the supervisor at $NOTIFY_SOCKET ({address}): {error}; not trying to say more",
                address=os.environ.get("NOTIFY_SOCKET"), error=str(exc) or type(exc).__name__,
            )
        return False
    return True


def notify_ready(status: str) -> bool:
    """Serving now: ``READY=1`` with a status such as ``listening on 127.0.0.1:7001``."""
    return notify("READY=1", f"STATUS={_one_line(status)}")


def notify_stopping() -> bool:
    """A stop has begun; the status keeps a start-up failure's reason if there was one."""
    return notify("STOPPING=1") if _failed else notify("STOPPING=1", "STATUS=stopping: draining the connections in flight")


def notify_failed(reason: str) -> bool:
    """Start-up failed (the process then exits 1): the reason, as the status line."""
    global _failed
    _failed = True
    return notify(f"STATUS={_one_line(reason)}")
