"""Test configuration: helpers importable, hypothesis profiles, fixed thread count."""
from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(__file__))


try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile("thorough", max_examples=200, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev dependency
    pass
