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


@pytest.fixture
def plan_within():
    """``plan_within(model, budget)``: the plan for a random ``max_multipliers`` draw, raised
    to the smallest budget the model can take when the draw is below it (every conv1x1 needs
    a MAC and, but for the classifier, a Requant multiplier; a gap one): a random network
    with more layers than the draw allows is not what these tests are about."""
    from shiftacc.hw.plan import PlanError, load_config, plan_network

    def plan_within(model, budget):
        for b in range(int(budget), int(budget) + 1000):
            try:
                return plan_network(model, load_config(overrides={"max_multipliers": b}))
            except PlanError as e:
                if "no pipeline fits" not in str(e):
                    raise
        raise AssertionError(f"no plan for the model within {budget}..{budget + 999} "
                             f"multipliers")
    return plan_within
