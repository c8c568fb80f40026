"""Exact cycle model of the overlay engine (:class:`hw.overlay.OverlayEngine`), spec §7.

The engine's schedule is fixed by construction (no data-dependent waits except the logits
credit, which an always-ready consumer never exercises), so the cycles per image are a small
formula of the program. With images back to back and the logits stream always ready, the
cycles between the first accepted beats of consecutive images are::

    image = SETUP * (passes + 1)          # every program row, the END row included
          + LOAD                          # h * w * in_c of pass 0: one value a cycle
          + sum over passes of sum over its groups of group(pass, g)

    group = GSTART + N * T + (cin + D - T) + FLUSH  [+ GAP_LOAD + D + GAP_FLUSH  with a gap]

    with a weight store (``OverlayConfig.weight_store``) every group starts with its COPY:
    group += cin (one store row a cycle into the weight cache), a pass's first group also
    += cin + cout + 3 (its gather entries into the gather table, its channel entries, an odd
    cout's pad and a gap's two included, into the channel tables), and no group is chained

    chained (:func:`chain_mode`), a group before the pass's last one:
    group = [GSTART for the first] + N * T   [+ (cin + D - T) + FLUSH + GAP_LOAD  "gapload"]
    and the pass's last group is the formula above without its GSTART

where, for a group of ``P_g`` lanes (``P`` = ``lanes``, ``last_group`` in the last group):

* ``D = ceil(P_g / R)`` drain steps (``R`` = ``requant_units``), ``D = P_g`` on the raw
  classifier pass (its logits leave one a cycle);
* ``T = max(cin, D, 2)`` cycles per output position: ``cin`` of them issue one gather
  entry each, and the drain of the previous position (``D`` steps) must be over before the
  next hand-off; at least 2, so that the gap sums' block RAM (read one stage before its
  write) is written before the next position reads the same sum;
* ``N`` output positions: ``ho * wo``, or ``4 * (ho // 2) * (wo // 2)`` with a fused maxpool
  (outputs outside the pooled windows are never computed);
* the raw (classifier) pass drains its logits at the consumer's pace, so one of its positions
  starts only when the previous one has left the drain: with ``N > 1`` positions its issue
  phase is ``(N - 1) * (cin + 6 + D) + T`` instead of ``N * T`` (the artifact gives the
  classifier a 1×1 map, so ``N = 1`` there);
* the constants (:data:`hw.overlay.PIPE`): ``SETUP = len(PASS_FIELDS) + 2`` = 27 (one field
  a cycle, the read latency, one cycle deriving the address steps), ``GSTART = 3`` (P_g, D,
  then T), ``FLUSH = 17`` (the engine leaves a group when nothing is in flight: the last
  position's last issue is ``T - cin`` cycles before the issue phase's end, its drain takes
  ``D`` steps, then ``FLUSH`` cycles: 6 MAC stages, 1 take, 8 requant stages, pool, gap/write
  request, write, the idle test; ``cin + D - T`` is ``min(cin, D)`` unless ``T`` is padded to
  2), ``RAW_FLUSH = 15`` on the raw pass (its logits leave at S2; its items still pass the
  valid flags of S3-S8), ``FLUSH = GAP_SUM_FLUSH = 16`` with a gap (the gap sum's write at
  S9 is the last stage: no write request), ``GAP_LOAD = 1`` (the drain switched to the gap
  sums) and ``GAP_FLUSH = 11`` (the gap drain's last step to its idle test).
"""

from .cdc import IMAGE_FIFO_DEPTH
from .overlay import _HANDOFF, PIPE
from .overlay_program import OP_DYN, OP_ECA, OP_SAM

__all__ = ["image_cycles", "pass_cycles", "group_cycles", "load_cycles", "attention_cycles",
           "sam_cycles", "dyn_cycles", "chained", "chain_mode"]


def _get(p, name):
    return int(p[name] if isinstance(p, dict) else getattr(p, name))


def chain_mode(p, lanes, requant_units, store=False):
    """How the groups of pass ``p`` are chained (each group after the first starts without a
    GSTART while the previous one is still in flight), ``None`` if they are not.

    The engine chains when every group has all ``lanes`` lanes (``last_group == lanes``:
    P_g, D and T do not change under the previous group's drain) and the pass is not the raw
    classifier (its logits' last flag reads the group counter). Then:

    * ``"issue"``: the next group's first position follows the last position like another
      position of the group. Without a gap, always; with a gap when (``D = ceil(lanes /
      R)``) ``D <= 8``, ``cin >= max(2 D, 10)`` and a group has at least 2 positions: the
      gap drain takes the D drain steps right after the next group's first position's.
    * ``"gapload"``: with a gap otherwise, if ``cin + 6 >= D``: the next group's first issue
      is the cycle after GAPLOAD (its first hand-off comes after the gap drain's last step).
    """
    if store or _get(p, "raw") or _get(p, "last_group") != lanes:
        # (with a weight store every group's COPY needs the banks to itself)
        return None
    if not _get(p, "gap"):
        return "issue"
    d = -(-lanes // requant_units)
    cin = _get(p, "cin")
    n = 4 * (_get(p, "ho") // 2) * (_get(p, "wo") // 2) if _get(p, "pool") else \
        _get(p, "ho") * _get(p, "wo")
    if d <= 8 and cin >= max(2 * d, 10) and n >= 2:
        return "issue"
    return "gapload" if cin + _HANDOFF >= d else None


def chained(p, lanes, requant_units, store=False):
    """Whether the groups of pass ``p`` are chained (:func:`chain_mode`)."""
    return chain_mode(p, lanes, requant_units, store) is not None


def group_cycles(p, group, lanes, requant_units, store=False):
    """Cycles of group ``group`` of pass ``p`` (a dict of ``PASS_FIELDS``); ``store``: the
    engine has a weight store (``OverlayConfig.weight_store``): the group's COPY (``cin``
    cycles, one store row each; ``2 cin + cout + 3`` in the pass's first group, whose
    gather and channel entries are copied too) comes first and no group is chained."""
    groups = _get(p, "groups")
    pg = _get(p, "last_group") if group == groups - 1 else lanes
    d = pg if _get(p, "raw") else -(-pg // requant_units)
    cin = _get(p, "cin")
    mode = chain_mode(p, lanes, requant_units, store)
    chain = mode is not None
    ho, wo = _get(p, "ho"), _get(p, "wo")
    n = 4 * (ho // 2) * (wo // 2) if _get(p, "pool") else ho * wo
    t = max(cin, d, 2)
    if _get(p, "raw") and n > 1:
        # A raw position starts when the previous one has left the drain (its logits wait
        # for the consumer): cin issues, the hand-off, D steps.
        issue = (n - 1) * (cin + _HANDOFF + d) + t
    else:
        issue = n * t
    gap = _get(p, "gap")
    # the last issue is T - cin cycles before the issue phase's end; FLUSH counts from it
    flush = (cin + d - t) + (PIPE.raw_flush if _get(p, "raw") else
                             PIPE.gap_sum_flush if gap else PIPE.flush)
    # (a weight store: the group's rows, before the pass's first its gather entries)
    cycles = issue + (PIPE.group_start if group == 0 or not chain else 0) + (
        (2 * cin + _get(p, "cout") + 3 if group == 0 else cin) if store else 0)
    if chain and group < groups - 1:
        # chained: the next group's first issue follows this group's last position T cycles
        # after that position's start ("issue"), or the cycle after GAPLOAD ("gapload": FLUSH
        # still waits for the last gap sum; the gap drain runs under the next group)
        return cycles + (flush + PIPE.gap_load if mode == "gapload" else 0)
    cycles += flush
    if gap:
        cycles += PIPE.gap_load + d + PIPE.gap_flush
    return cycles


def attention_cycles(p):
    """Cycles of a channel_attention pass (op ECA) after its SETUP, for a map H×W×C and k
    taps (``hw/overlay.py`` ``OverlayEngine._attention``)::

        ATT_INIT + C*H*W + ATT_POOL_WAIT              # pool: one read a cycle, channel-major
        + C * (k + ATT_CONV_STEP) + ATT_CONV_WAIT     # per channel: taps, z, LUT, a[c]
        + C * (H*W [+ ATT_GAP_SLOTS]) + ATT_SCALE_WAIT   # scale (and a fused gap)

    With a fused gap the last channel's idle slots are inside the final wait, which is then
    ``ATT_SCALE_WAIT + ATT_GAP_SLOTS`` after the last read: the same sum.

    The unit's multiplier has ``ATT_MUL`` = 2 register stages before its product register
    (operand, partial products): the waits grow by ``ATT_MUL``, a step that takes an item
    through the multiplier twice (a tap into z, then z's requant) by ``2 * ATT_MUL``
    (``hw.overlay.PipelineConstants``).
    """
    c = _get(p, "in_c")
    npix = _get(p, "h") * _get(p, "w")
    k = _get(p, "cin")
    if _get(p, "op") == OP_SAM:
        return sam_cycles(c, npix, _get(p, "gap"))
    gap = PIPE.att_gap_slots if _get(p, "gap") else 0
    return (PIPE.att_init + c * npix + PIPE.att_pool_wait
            + c * (k + PIPE.att_conv_step) + PIPE.att_conv_wait
            + c * (npix + gap) + PIPE.att_scale_wait)


def sam_cycles(c, npix, gap):
    """Cycles of a spatial_attention pass (op SAM) after its SETUP, for a map of ``npix``
    pixels and ``C`` channels::

        SAM_INIT + C*npix + ATT_POOL_WAIT                 # pool, as ECA's
        + C * (C + SAM_CTX_STEP) + SAM_CTX_WAIT           # u[c]: row bias, C products
        + npix * (2C + SAM_PIX_STEP) + SAM_PIX_WAIT       # per pixel: z, s, C scaled values
        [+ C * (npix + SAM_GAP_SLOTS) + SAM_GAP_WAIT]     # a fused gap, in place in dst
    """
    cycles = (PIPE.sam_init + c * npix + PIPE.att_pool_wait
              + c * (c + PIPE.sam_ctx_step) + PIPE.sam_ctx_wait
              + npix * (2 * c + PIPE.sam_pix_step) + PIPE.sam_pix_wait)
    if gap:
        cycles += c * (npix + PIPE.sam_gap_slots) + PIPE.sam_gap_wait
    return cycles


def dyn_cycles(p, kernels):
    """Cycles of a dynamic_conv1x1's attention pass (op DYN) after its SETUP, for its conv's
    source map of ``N`` pixels, ``cin`` inputs, ``cout`` outputs and K kernels::

        DYN_FIXED + cin * (N + DYN_GATHER)       # pool through the gather, t-grid masked
        + K * (cin + DYN_ROW)                    # r[k]: att_bias[k] + cin products
        + K + K * DYN_DIV                        # e[k] (one a cycle), pi[k] (division)
        + K * (cin * cout + cout)                # the mixed weights and biases, K taps each
    """
    npix = _get(p, "h") * _get(p, "w")
    cin, cout = _get(p, "cin"), _get(p, "cout")
    k = int(kernels)
    return (PIPE.dyn_fixed + cin * (npix + PIPE.dyn_gather) + k * (cin + PIPE.dyn_row)
            + k + k * PIPE.dyn_div + k * (cin * cout + cout))


def load_cycles(plan):
    """LOAD: one image value a cycle (pass 0's ``h * w * in_c``)."""
    p = plan.passes[0]
    return _get(p, "h") * _get(p, "w") * _get(p, "in_c")


def pass_cycles(plan):
    """Cycles of each pass: its SETUP (program row read) and its groups.

    Pass 0's SETUP happens before LOAD (the image size is read from its row); LOAD and the
    END row's SETUP are not in this list (see :func:`image_cycles`).

    Returns
    -------
    list of int
    """
    lanes, r = plan.config.lanes, plan.config.requant_units
    out = []
    for p in plan.passes:
        op = _get(p, "op")
        if op in (OP_ECA, OP_SAM):
            cycles = attention_cycles(p)
        elif op == OP_DYN:
            # K from the pass's attention-table words (DYN_HEAD: K | t << 8 at entry 2)
            cycles = dyn_cycles(p, int(plan.att[_get(p, "gap_ent") + 2]) & 0xFF)
        else:
            store = bool(getattr(plan.config, "weight_store", 0))
            cycles = sum(group_cycles(p, g, lanes, r, store) for g in range(_get(p, "groups")))
        out.append(PIPE.setup + cycles)
    return out


def image_cycles(plan, link_ratio=1, fifo_depth=IMAGE_FIFO_DEPTH):
    """Steady-state cycles per image (images back to back, logits always ready).

    ``link_ratio`` 2: the engine behind a dual-clock :class:`~shiftacc.hw.board.LinkTop`
    (the iCE40 boards), its images from a link at half its clock, in phase, through the
    ``fifo_depth``-entry :class:`~shiftacc.hw.cdc.AsyncStreamFIFO` (the link offering a
    value every link cycle, its logits consumer always ready). The FIFO is full when LOAD
    starts (the link fills it while the passes run), so LOAD takes its ``fifo_depth``
    values one a cycle, then the link's values one per link cycle: with ``N`` values,
    ``2 N - 1`` or ``2 N`` cycles from LOAD's first cycle to its last value, by the link
    clock's phase at LOAD's start. In steady state the period is a whole number of link
    cycles (the system repeats only in phase), which picks the phase: the period is the
    single-clock one plus ``N - 1``, rounded up to even. (``N <= fifo_depth``: the image
    is in the FIFO at LOAD's start, the single-clock period.)
    """
    single = load_cycles(plan) + sum(pass_cycles(plan)) + PIPE.setup
    if link_ratio == 1:
        return single
    if link_ratio != 2:
        raise ValueError(f"image_cycles: link_ratio {link_ratio} (1 or 2)")
    n = load_cycles(plan)
    if n <= fifo_depth:
        return single
    period = single + n - 1
    return period + (period & 1)
