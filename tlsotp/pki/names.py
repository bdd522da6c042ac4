"""The one spelling of a party's name: a lowercase DNS host name.

Names go into certificates as DNS SANs and are compared byte for byte (token against CSR,
certificate against the expected peer), so they are checked and normalised once, at the edge.
"""

from __future__ import annotations

import re

MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_dns_name(text: str) -> str:
    """Return ``text`` lowercased if it is a DNS host name (no wildcard, no trailing dot)."""
    name = text.strip().lower()
    if not name:
        raise ValueError("a name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name is longer than {MAX_NAME_LENGTH} characters")
    for label in name.split("."):
        if not _LABEL.match(label):
            raise ValueError(
                f"{text!r} is not a DNS host name (labels of letters, digits and inner hyphens, "
                "separated by dots)"
            )
    return name
