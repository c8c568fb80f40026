"""Shared fixtures: per-test seeds derived from ``SHIFTACC_SEED``, one build cache for the run."""

import os
from pathlib import Path

import numpy as np
import pytest

# Every Verilator/Icarus build of the suite lands in one cache in the checkout (not the user's
# home), so repeated runs reuse builds and a clean checkout starts clean.
os.environ.setdefault("SHIFTACC_CACHE", str(Path(__file__).resolve().parent.parent / "build"
                                            / "sim-cache"))

from shiftacc.sim.streamtb import BASE_SEED, derive_seed  # noqa: E402  (after the env default)


def pytest_report_header(config):
    return f"shiftacc: SHIFTACC_SEED={BASE_SEED} (set it to reproduce this run's random cases)"


@pytest.fixture
def seed(request):
    """This test's seed (printed; derived from SHIFTACC_SEED and the test's id)."""
    s = derive_seed(request.node.nodeid)
    print(f"[seed] {request.node.nodeid}: seed {s} (SHIFTACC_SEED={BASE_SEED})")
    return s


@pytest.fixture
def np_rng(seed):
    """A NumPy generator seeded by :func:`seed`."""
    return np.random.default_rng(seed)
