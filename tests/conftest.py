"""Test configuration: make ``helpers`` importable, one torch thread per xdist worker,
and a CI-stable hypothesis profile.

test_properties.py pins its own settings (25 derandomized examples); for a bug hunt run
``SLIMC_PROP_EXAMPLES=500 SLIMC_PROP_RANDOM=1 pytest tests/test_properties.py``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: with -n 2 on 2 cores, two workers spinning two
    # OpenMP threads each run the suite ~10x slower than serially
    import torch

    torch.set_num_threads(1)

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
        suppress_health_check=[getattr(HealthCheck, n) for n in ("too_slow", "data_too_large") if hasattr(HealthCheck, n)],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev dependency
    pass
