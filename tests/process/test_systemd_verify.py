"""``systemd-analyze verify`` passes on contrib/systemd/'s units, as installed.

The units run ``/opt/tlsotp/bin/twistd`` (docs/deployment.rst installs there); verify checks
that ExecStart's program exists, so the test verifies copies in which that directory is this
interpreter's scripts directory (where pip put ``twistd``), and nothing else changed. A warning
(an unknown key, a bad value: systemd ignores those and goes on) fails the test as well.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.processes import guarded
from tests.systemd_units import INSTALL_BIN, UNITS

UNIT_SUFFIXES = (".service", ".socket", ".timer")


def systemd_analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise SkipTest("systemd-analyze is not installed on this machine (no systemd): nothing can verify the units")
    return analyze


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        guarded([systemd_analyze(), "verify", "--man=no", *map(str, units)]),
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


class VerifyTests(TestCase):
    def setUp(self) -> None:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir()
        # Can systemd-analyze verify anything here (in a container without a running systemd it
        # usually can)? If not, the reason is its own words.
        probe = self.workdir / "tlsotp-probe.service"
        probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
        result = verify(probe)
        if result.returncode != 0 or result.stdout or result.stderr:
            raise SkipTest(f"systemd-analyze verify cannot run here: {(result.stderr or result.stdout).strip()}")
        probe.unlink()

    def installed(self) -> list[Path]:
        scripts = Path(sysconfig.get_path("scripts"))
        if not (scripts / "twistd").exists():
            raise SkipTest(f"no twistd script in {scripts} to stand for {INSTALL_BIN}twistd (install the package with pip)")
        copies = []
        for unit in sorted(UNITS.iterdir()):
            if unit.suffix in UNIT_SUFFIXES:
                copy = self.workdir / unit.name
                copy.write_text(unit.read_text().replace(INSTALL_BIN, f"{scripts}/"))
                copies.append(copy)
        return copies

    def test_the_units_pass_systemd_analyze_verify(self) -> None:
        copies = self.installed()
        self.assertEqual(
            sorted(c.name for c in copies),
            sorted(f"tlsotp-{name}" for name in (
                "client.service", "client.timer", "server.service", "server.socket", "ttp.service", "ttp.socket",
            )),
        )
        result = verify(*copies)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_verify_here_does_catch_a_broken_unit(self) -> None:
        # The check above is live: a misspelt key and a program that is not there are reported.
        copies = {c.name: c for c in self.installed()}
        broken = copies["tlsotp-server.service"]
        broken.write_text(broken.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
        result = verify(broken)
        self.assertIn("Unknown key 'ProtectHom'", result.stdout + result.stderr)
        if not Path(f"{INSTALL_BIN}twistd").exists():
            result = verify(UNITS / "tlsotp-ttp.service")
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"{INSTALL_BIN}twistd", result.stdout + result.stderr)
