"""The whole-session generated tests: the byte-flip sweep and the adversary state machines.

No subprocess, but CPU-heavy (``python -m twisted.trial tests.sweep``): kept out of the fast tier.
"""
