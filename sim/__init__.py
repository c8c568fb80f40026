"""Simulation of whole generated accelerators: harness, cocotb testbenches and their runner.

:func:`shiftacc.sim.runner.simulate` is the entry point (``shiftacc sim`` and the tests use
it); :mod:`shiftacc.sim.harness` wraps the accelerator with bulk memories,
:mod:`shiftacc.sim.tb_accel` holds the cocotb tests that run inside the simulator.
"""
