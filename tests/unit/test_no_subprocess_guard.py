"""The fast tier's own rule, checked inside it: its tests cannot start a process."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests.no_subprocess import GUARDED, NoSubprocess, running_test_module


class GuardTests(unittest.TestCase):
    def test_the_tier_is_guarded(self) -> None:
        self.assertIn("tests.unit", GUARDED)
        self.assertEqual(running_test_module(), __name__)

    def test_subprocess_is_refused(self) -> None:
        with self.assertRaises(NoSubprocess) as refused:
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        self.assertIn("subprocess.Popen", str(refused.exception))
        self.assertIn(__name__, str(refused.exception))

    def test_fork_and_posix_spawn_are_refused(self) -> None:
        self.assertRaises(NoSubprocess, os.fork)
        self.assertRaises(NoSubprocess, os.posix_spawn, sys.executable, [sys.executable, "-c", "pass"], os.environ)

    async def test_a_spawn_from_a_reactor_callback_is_refused(self) -> None:
        """Work the reactor runs for an asynchronous test is inside that test's ``run`` too."""

        def spawn() -> None:
            reactor.spawnProcess(  # type: ignore[attr-defined]
                ProcessProtocol(), sys.executable, [sys.executable, "-c", "pass"], env=None
            )

        with self.assertRaises(NoSubprocess):
            await deferLater(reactor, 0, spawn)

    async def test_a_spawn_from_a_thread_is_refused(self) -> None:
        """A test's worker thread (the stores run their SQL on one) is held to the same rule."""
        with self.assertRaises(NoSubprocess):
            await deferToThread(subprocess.run, [sys.executable, "-c", "pass"], check=False)

    def test_a_spawn_while_a_tier_module_is_imported_is_refused(self) -> None:
        """Module-level code of the tier (run while trial imports it, before any test) too."""
        code = compile("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])\n", "imported.py", "exec")
        with self.assertRaises(NoSubprocess) as refused:
            exec(code, {"__name__": "tests.unit.imported_fixture"})
        self.assertIn("tests.unit.imported_fixture", str(refused.exception))
