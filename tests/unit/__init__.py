"""The fast tier: no subprocess, well under 20 s alone (``python -m twisted.trial tests.unit``)."""
