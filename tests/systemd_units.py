"""The systemd unit files of contrib/systemd/, read the way systemd reads what the tests check."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.processes import REPO

UNITS = REPO / "contrib" / "systemd"
#: Where the units expect the installation (a virtualenv made as docs/deployment.rst says).
INSTALL_BIN = "/opt/tlsotp/bin/"


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat), continuation lines joined, comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = sections.setdefault(header.group(1), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def exec_start(service: Path, environment: dict[str, str]) -> list[str]:
    """ExecStart as the argv systemd runs: split like a shell, each "${VAR}" one argument."""
    (command,) = unit_settings(service)["Service"]["ExecStart"]
    return [re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], word) for word in shlex.split(command)]
