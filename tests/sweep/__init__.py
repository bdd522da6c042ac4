"""The exhaustive sweeps: no subprocess, but CPU-heavy (``python -m twisted.trial tests.sweep``), kept out of the fast tier."""
