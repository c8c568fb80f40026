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


#: Long simulations left out of the default (CI) run, each with what keeps its ground covered
#: there: the README's test command should stay near 20 min on 2 cores, and a test named
#: here still runs with ``-m slow`` (or ``-m ""``). Node ids relative to the repository.
SLOW_IN_CI = {
    "tests/test_e2e_digits.py::test_digits_test_split_on_verilator[grouped-a4w4]":
        "4-bit digits model: test_digits_on_icarus[grouped-a4w4] (the whole split on Icarus)",
    "tests/test_e2e_digits.py::test_digits_on_icarus[sal-a8w8]":
        "8-bit digits model: the whole split on Verilator; Icarus: the 4-bit model",
    "tests/test_link_serve.py::test_icarus_serves_the_same_board":
        "serve on Verilator (this file); Icarus: test_e2e_digits, test_accel_sim",
    "tests/test_link_serve.py::test_uart_link_is_exact":
        "the UART PHY: test_uart.py and test_link.py::test_link_top_uart",
    "tests/test_cli_hw.py::test_sim_waves_on_demand[verilator-.fst]":
        "--waves: the Icarus VCD case (a Verilator --trace-fst build takes ~90 s)",
    "tests/test_sim_runner.py::test_second_design_takes_the_precompiled_runtime_objects":
        "the object cache is used by every Verilator build of the run",
    "tests/test_accel_sim.py::test_random_network_verilator_with_stalls[1]":
        "random network under stalls: draw [0]",
    "tests/test_accel_sim.py::test_protocol_path_random_stalls":
        "the protocol path: test_sim_runner's stalled protocol run, the serve tests",
    "tests/test_explore.py::test_regress_and_planted_fault":
        "fault localisation: test_accel_sim/test_accel_v2 fault tests; Ray rows: this file",
    "tests/test_link_fuzz.py::test_link_fuzz[serial_crc]":
        "the bit-serial CRC: the registered-reads and iCEBreaker-poisoned fuzz runs",
}


def pytest_collection_modifyitems(config, items):
    """Mark :data:`SLOW_IN_CI` ``slow``; an entry naming a function that a collected test file
    does not define is an error (a renamed test would otherwise slip back into CI unnoticed)."""
    modules = {}
    for item in items:
        modules[item.nodeid.split("::")[0]] = getattr(item, "module", None)
        if item.nodeid in SLOW_IN_CI:
            item.add_marker(pytest.mark.slow)
    stale = [n for n in SLOW_IN_CI
             if n.split("::")[0] in modules
             and not hasattr(modules[n.split("::")[0]], n.split("::")[1].split("[")[0])]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py SLOW_IN_CI names tests that do not exist: "
                                f"{stale}")
