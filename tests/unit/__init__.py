"""The fast tier: no subprocess, well under 30 s alone (``python -m twisted.trial tests.unit``).

Importing it forbids its tests to start a process (``tests.no_subprocess.guard_tier``), in a run
of this tier alone or of the whole suite: a test that starts a program fails with
``NoSubprocess`` and belongs in ``tests.process``.
"""

from tests.no_subprocess import guard_tier

guard_tier(__name__)
