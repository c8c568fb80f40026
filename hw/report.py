"""The design summary ``shiftacc generate`` writes: every figure from the plan's stages.

Multipliers, DSP blocks and memories are the blocks' own statements (``cost`` classmethods,
:mod:`hw.resources`), summed by :class:`hw.plan.Plan`; nothing is recounted here.
"""

from .resources import FAMILY_CELL

__all__ = ["memories", "summary"]


def memories(model, plan):
    """On-chip memories of the design as the RTL builds them.

    Returns
    -------
    list of (name, depth, width)
        One entry per ``Memory`` instance (a lane-banked line buffer is one entry per lane;
        FIFO storage included).
    """
    return [(mem.name, mem.depth, mem.width) for mem in plan.memories()]


def summary(model, plan):
    """The generate summary as a JSON-able dict.

    Besides the plan (:meth:`hw.plan.Plan.to_dict`: stages, multipliers, DSP blocks per
    family, cycle model), it lists the model's layers, the parallelism chosen, every memory
    and a one-line resource statement, e.g. ``"150 multipliers (179 MULT18X18D on ECP5, 179
    SB_MAC16 on iCE40)"``.
    """
    mems = memories(model, plan)
    shapes = model.shapes()
    return {
        "model": model.name,
        "input": list(model.input_shape),
        "layers": [{"index": i, "op": layer.op,
                    "in_shape": list(shapes[i]), "out_shape": list(shapes[i + 1])}
                   for i, layer in enumerate(model.layers)],
        "parallelism": {str(k): v for k, v in plan.layer_lanes().items()},
        "memories": [{"name": n, "depth": d, "width": w, "bits": d * w} for n, d, w in mems],
        "memory_bits": sum(d * w for _, d, w in mems),
        "resources": plan.resource_line(),
        "dsp_cells": dict(FAMILY_CELL),
        **plan.to_dict(),
    }
