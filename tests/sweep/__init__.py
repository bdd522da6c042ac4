"""The CPU-heavy generated tests: the byte-flip sweep, the adversary and lineage state machines, decoder fuzzing.

No subprocess, but CPU-heavy (``python -m twisted.trial tests.sweep``): kept out of the fast tier.
"""
