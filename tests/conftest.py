"""Test configuration: make ``helpers`` (and the ``randarch`` generator) importable, one
torch thread per xdist worker.

test_properties.py draws random architectures from fixed seeds; replay one with
``SLIMC_PROP_SEEDS=123 pytest tests/test_properties.py -k test_draw``.
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


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _api_quiet():
    """Each test starts with the API quiet: a benchmark's main() run in-process switches the
    CLI's plain progress lines on for the rest of its process."""
    from slimc.progress import plain_lines

    plain_lines(False)
    yield
