"""The test suite. Importing it registers hypothesis profiles for the property-based tests.

``ci`` (the default) keeps the whole suite within its time budget; set
``TLSOTP_HYPOTHESIS_PROFILE=long`` for a deeper local run (about 20x the examples).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,  # timing belongs in benchmarks; a loaded CI machine must not fail a property
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("TLSOTP_HYPOTHESIS_PROFILE", "ci"))
