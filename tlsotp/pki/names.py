"""The one spelling of a party's name: a lowercase DNS host name.

Names go into certificates as DNS SANs and are compared byte for byte (token against CSR,
certificate against the expected peer), so they are checked and normalised once, at the edge.

Every check is a full match (``re.fullmatch``): Python's ``$`` also matches before a trailing
newline, so ``^...$`` with ``re.match`` would let ``"bank\\n.example"`` through. A control or
other non-printable character anywhere (a newline, a NUL, a zero-width space) is refused
before anything is normalised, so that nothing is silently stripped away.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _refuse_unprintable(text: str) -> None:
    # str.isprintable is False for every control, format, surrogate, private-use, unassigned and
    # line/paragraph separator character, and for every space except the ASCII one.
    bad = next((ch for ch in text if not ch.isprintable()), None)
    if bad is not None:
        raise ValueError(f"{text!r} is not a DNS host name: it contains the control character U+{ord(bad):04X}")


def check_dns_name(text: str) -> str:
    """Return ``text`` lowercased if it is a DNS host name (no wildcard, no trailing dot).

    For names an operator types: surrounding spaces are dropped and case is folded, but a
    control character anywhere (a trailing newline included) is refused, never stripped.
    """
    _refuse_unprintable(text)
    name = text.strip(" ").lower()
    if not name:
        raise ValueError("a name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name is longer than {MAX_NAME_LENGTH} characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"{text!r} is not a DNS host name (labels of letters, digits and inner hyphens, "
                "separated by dots)"
            )
    return name


def check_peer_name(text: str) -> str:
    """Return ``text`` if it is already a name in its one spelling (from a peer: nothing is fixed up).

    Surrounding whitespace, upper case or any control character is refused, not normalised.
    """
    name = check_dns_name(text)
    if name != text:
        raise ValueError(f"{text!r} is not a DNS host name in lowercase without surrounding spaces")
    return name
