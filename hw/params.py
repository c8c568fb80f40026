"""Run-time parameter loading: one stream format for every block, defined once.

Both sides import this module: the gateware decodes :data:`PARAM_LAYOUT` beats, the host
driver (and the simulators) build them with :func:`layer_param_words`. One beat writes one
value into one block's on-chip memory:

====== ====== ===================================================================
field  bits   meaning
====== ====== ===================================================================
layer  8      index of the layer in the artifact (the block compares its own id)
kind   8      :class:`ParamKind`: which memory of that layer
row    16     memory row, in the *hardware* layout (depends on the layer's P)
lane   16     element within the row
data   32     value, two's complement for signed kinds
====== ====== ===================================================================

Addressing, for a layer with input lanes ``p_in`` and output lanes ``p_out``:

* ``WEIGHT`` w[o, i]: row ``(o // p_out) * ceil(cin / p_in) + i // p_in``,
  lane ``(o % p_out) * p_in + i % p_in``.
* ``BIAS``/``M``/``SH`` of output channel o: row ``o // p_out``, lane ``o % p_out``.
  A ``gap`` layer has one (m, sh): row 0, lane 0.
* ``SHIFT`` of channel c: row ``c // p``, lane ``c % p``; data = ``(dy & 0xFF) | (dx & 0xFF) << 8``.

Version-2 (attention) layers add five kinds; each block keeps small tables in registers or
one memory, so the addresses are the plain array indices:

* ``LUT`` entry j of a ``lut``/``exp_lut`` table: row 0, lane j.
* ``KERNEL`` tap j of a ``channel_attention`` kernel: row 0, lane j.
* ``SCALAR`` number n of a layer (:data:`SCALAR_IDS` lists them per op): row 0, lane n.
* ``ATT_WEIGHT`` ``[r, c]`` of a matrix (``ctx_weight`` of ``spatial_attention``,
  ``att_weight`` of ``dynamic_conv1x1``): row r, lane c.
* ``ATT_BIAS`` element r of a vector (``ctx_bias``, ``att_bias``): row 0, lane r.

A ``dynamic_conv1x1`` banks its K kernels: kernel k's ``WEIGHT`` w[k, o, i] at row
``k * ceil(cout / p_out) * ceil(cin / p_in)`` + the conv1x1 row, its ``BIAS`` at row
``k * ceil(cout / p_out) + o // p_out``; ``M``/``SH`` as a conv1x1.

The overlay engine (``hw/overlay.py``, issue #10) is one engine for the whole network, so
its beats all carry ``layer`` = :data:`OVERLAY_LAYER` (0xFF) and address its own memories
(``hw/overlay_program.py`` builds them; the layouts are in ``/work/v3/OVERLAY.md`` §3-§5):

* ``PROGRAM`` field f of pass p: row p, lane f (index in ``overlay_program.PASS_FIELDS``),
  data = the field's value; the END row is written explicitly.
* ``GATHER`` entry e: row e, lane 0, data laid out as :data:`GATHER_DATA`
  (``bank | (off & 0xFFFFF) << 1 | (dy & 0xF) << 21 | (dx & 0xF) << 25``,
  :func:`gather_data` / :func:`gather_fields`).
* ``QMAX`` (the clamp ``2**act_bits - 1``) of channel entry e: row e, lane 0.
* ``WEIGHT`` row r, lane l (the overlay's weight memory row and MAC lane); ``BIAS``/``M``/
  ``SH`` of channel entry e: row e, lane 0.

Parameter consumers are always ready (they only write memories): block ports are
``always_ready`` streams (:func:`param_bus_signature`), broadcast to every block.
"""

from types import SimpleNamespace

from amaranth.hdl import Signal, signed
from amaranth.lib import data, enum, stream
from amaranth.utils import ceil_log2

__all__ = ["ParamKind", "PARAM_LAYOUT", "SHIFT_DATA", "param_bus_signature", "PARAM_BYTES",
           "encode_word", "decode_word", "conv_param_words", "shift_param_words",
           "gap_param_words", "SCALAR_IDS", "channel_attention_param_words",
           "spatial_attention_param_words", "dynamic_conv_param_words", "KIND_FIELDS",
           "OVERLAY_LAYER", "GATHER_DATA", "gather_data", "gather_fields",
           "param_write_stage"]


class ParamKind(enum.Enum, shape=8):
    """Which on-chip memory of a layer a parameter beat writes."""
    WEIGHT = 0
    BIAS = 1
    M = 2
    SH = 3
    SHIFT = 4
    LUT = 5
    KERNEL = 6
    SCALAR = 7
    ATT_WEIGHT = 8
    ATT_BIAS = 9
    PROGRAM = 10
    GATHER = 11
    QMAX = 12


#: The ``SCALAR`` lane of each scalar field of the version-2 ops (the artifact's key names).
SCALAR_IDS = {
    "channel_attention": ("pool_m", "pool_sh", "bias", "z_m", "z_sh"),
    "spatial_attention": ("pool_m", "pool_sh", "ctx_m", "ctx_sh", "bias", "z_m", "z_sh"),
    "dynamic_conv1x1": ("att_pool_m", "att_pool_sh", "att_m", "att_sh"),
}


PARAM_LAYOUT = data.StructLayout({
    "layer": 8,
    "kind": ParamKind,
    "row": 16,
    "lane": 16,
    "data": 32,
})

#: The ``data`` field of a ``SHIFT`` beat: (dy, dx) as two's complement bytes.
SHIFT_DATA = data.StructLayout({"dy": signed(8), "dx": signed(8)})

#: Bytes of one parameter beat on a byte transport (little-endian payload).
PARAM_BYTES = PARAM_LAYOUT.size // 8


def param_bus_signature():
    """``stream.Signature`` of a block's parameter port: ``always_ready`` (``ready`` is the
    constant 1).

    Consumers only write memories and registers and never stall, so the port is a plain
    valid + payload broadcast that one register fans out to every block.
    """
    return stream.Signature(PARAM_LAYOUT, always_ready=True)


def param_write_stage(m, port, layer_id, targets, *, registered=True, name="par"):
    """Stage 1 of a block's parameter write decode: the wide compares, one result per target.

    A block's parameter beat is decoded over two stages. This one compares the wide bus
    fields (``valid``, 8-bit ``layer`` and ``kind``, 16-bit ``row`` and ``lane``) once per
    *target* (a memory or register group of one kind) into a single ``hit`` bit, and keeps
    the narrow row / lane / data fields beside it; the block's stage 2 forms its per-element
    write enables from these (a compare of a few ``lane``/``row`` bits with a constant).
    With ``registered`` every result is a flip-flop: the ~50-input decode, which used to run
    straight into the write enables of a whole memory spread across the die (the 85F digits
    design's critical path: L7.conv's payload register -> 5 LUT levels across the die ->
    ``weights_wen_q``, 11.3 ns, 9.4 ns of it routing), now ends in a handful of flip-flops
    the placer keeps beside the block's payload register, and stage 2 starts from
    registers. Costs one cycle of parameter-write latency (nothing per image: parameters
    are written while no image is in flight; every beat is still written, in order, since
    both stages advance every cycle). ``registered=False`` gives the same signals
    combinationally (the one-stage decode, for a producer whose timing counts the write
    latency, e.g. :class:`~hw.dynamic_conv.DynamicConv1x1` writing its MacArray per image).

    Parameters
    ----------
    m : Module
    port : a :func:`param_bus_signature` port (``valid``, ``payload``)
    layer_id : int
        The block's layer (beats of other layers never hit).
    targets : dict
        ``key -> (kind, rows, lanes)``: ``hit[key]`` is ``valid & layer == layer_id &
        kind == kind & row < rows & lane < lanes``.
    registered : bool
        Register the results (two-stage decode) or not (one stage).
    name : str
        Prefix of the signal names.

    Returns
    -------
    SimpleNamespace
        ``hit`` (dict key -> 1-bit signal), ``any`` (a beat of this layer), ``row`` and
        ``lane`` (the fields' low bits, wide enough for the largest ``rows``/``lanes``: only
        meaningful where a ``hit`` is set), ``data`` (32 bits). The registered fields load
        only on the block's own beats (its own layer compare: never merged with another
        block's copy by Yosys's opt_merge).
    """
    par = port.payload
    mine = port.valid & (par.layer == layer_id)
    row_bits = max(1, max(ceil_log2(rows) for _, rows, _ in targets.values()))
    lane_bits = max(1, max(ceil_log2(lanes) for _, _, lanes in targets.values()))
    hits = {key: mine & (par.kind == kind) & (par.row < rows) & (par.lane < lanes)
            for key, (kind, rows, lanes) in targets.items()}
    if not registered:
        return SimpleNamespace(hit=hits, any=mine, row=par.row[:row_bits],
                               lane=par.lane[:lane_bits], data=par.data)
    out = SimpleNamespace(
        hit={key: Signal(name=f"{name}_hit_{key}_q") for key in targets},
        any=Signal(name=f"{name}_mine_q"),
        row=Signal(row_bits, name=f"{name}_row_q", reset_less=True),
        lane=Signal(lane_bits, name=f"{name}_lane_q", reset_less=True),
        data=Signal(32, name=f"{name}_data_q", reset_less=True))
    m.d.sync += [out.hit[key].eq(hit) for key, hit in hits.items()]
    m.d.sync += out.any.eq(mine)
    with m.If(mine):
        m.d.sync += [out.row.eq(par.row[:row_bits]), out.lane.eq(par.lane[:lane_bits]),
                     out.data.eq(par.data)]
    return out


def encode_word(layer, kind, row, lane, value):
    """Pack one parameter beat into the integer value of :data:`PARAM_LAYOUT`.

    Parameters
    ----------
    layer, row, lane : int
    kind : ParamKind
    value : int
        Signed or unsigned; stored as 32-bit two's complement.

    Raises
    ------
    ValueError
        A field does not fit its width.
    """
    if not (0 <= layer < 256 and 0 <= row < 65536 and 0 <= lane < 65536):
        raise ValueError(f"parameter address out of range: layer {layer}, row {row}, lane {lane}")
    if not -(1 << 31) <= value < (1 << 32):
        raise ValueError(f"parameter value {value} does not fit 32 bits")
    beat = PARAM_LAYOUT.const({"layer": layer, "kind": ParamKind(kind), "row": row,
                               "lane": lane, "data": value & 0xFFFFFFFF})
    return beat.as_value().value


def decode_word(word):
    """Inverse of :func:`encode_word`; returns (layer, kind, row, lane, unsigned data).

    Raises
    ------
    ValueError
        The kind field is not a :class:`ParamKind`.
    """
    beat = PARAM_LAYOUT.from_bits(word & ((1 << PARAM_LAYOUT.size) - 1))
    return beat.layer, beat.kind, beat.row, beat.lane, beat.data


def conv_param_words(layer, weight, bias, m, sh, p_in, p_out):
    """Parameter words of a conv1x1 layer for a MacArray with ``p_in`` × ``p_out`` lanes.

    Parameters
    ----------
    layer : int
        Layer index.
    weight : array [cout, cin]
    bias : array [cout]
    m, sh : array [cout] or None
        None for the classifier (raw output).

    Returns
    -------
    list of int
        Encoded words (see :func:`encode_word`).
    """
    cout, cin = len(weight), len(weight[0])
    nbi = -(-cin // p_in)
    words = []
    for o in range(cout):
        for i in range(cin):
            words.append(encode_word(layer, ParamKind.WEIGHT, (o // p_out) * nbi + i // p_in,
                                     (o % p_out) * p_in + i % p_in, int(weight[o][i])))
    kinds = [(ParamKind.BIAS, bias)]
    if m is not None:
        kinds += [(ParamKind.M, m), (ParamKind.SH, sh)]
    for kind, values in kinds:
        for o in range(cout):
            words.append(encode_word(layer, kind, o // p_out, o % p_out, int(values[o])))
    return words


def shift_param_words(layer, shifts, p):
    """Parameter words of a shift layer for a ShiftUnit with ``p`` lanes (data field laid
    out as :data:`SHIFT_DATA`)."""
    return [encode_word(layer, ParamKind.SHIFT, c // p, c % p,
                        SHIFT_DATA.const({"dy": int(dy), "dx": int(dx)}).as_value().value)
            for c, (dy, dx) in enumerate(shifts)]


def gap_param_words(layer, m, sh):
    """Parameter words of a gap layer (one m, one sh)."""
    return [encode_word(layer, ParamKind.M, 0, 0, int(m)),
            encode_word(layer, ParamKind.SH, 0, 0, int(sh))]


#: The array field each kind writes, per version-2 op (``SCALAR`` lanes: :data:`SCALAR_IDS`).
KIND_FIELDS = {
    "channel_attention": {ParamKind.KERNEL: "kernel", ParamKind.LUT: "lut"},
    "spatial_attention": {ParamKind.ATT_WEIGHT: "ctx_weight", ParamKind.ATT_BIAS: "ctx_bias",
                          ParamKind.LUT: "lut"},
    "dynamic_conv1x1": {ParamKind.WEIGHT: "weight", ParamKind.BIAS: "bias", ParamKind.M: "m",
                        ParamKind.SH: "sh", ParamKind.ATT_WEIGHT: "att_weight",
                        ParamKind.ATT_BIAS: "att_bias", ParamKind.LUT: "exp_lut"},
}


def _scalar_words(layer_id, layer):
    return [encode_word(layer_id, ParamKind.SCALAR, 0, n, int(getattr(layer, key)))
            for n, key in enumerate(SCALAR_IDS[layer.op])]


def _table_words(layer_id, kind, values):
    return [encode_word(layer_id, kind, 0, j, int(v)) for j, v in enumerate(values)]


def channel_attention_param_words(layer_id, layer):
    """Parameter words of a ``channel_attention`` layer: scalars, kernel taps, the table."""
    return (_scalar_words(layer_id, layer)
            + _table_words(layer_id, ParamKind.KERNEL, layer.kernel.tolist())
            + _table_words(layer_id, ParamKind.LUT, layer.lut.tolist()))


def spatial_attention_param_words(layer_id, layer):
    """Parameter words of a ``spatial_attention`` layer: scalars, ``ctx_weight`` rows,
    ``ctx_bias``, the table."""
    words = _scalar_words(layer_id, layer)
    for r, row in enumerate(layer.ctx_weight.tolist()):
        words += [encode_word(layer_id, ParamKind.ATT_WEIGHT, r, c, int(v))
                  for c, v in enumerate(row)]
    return (words + _table_words(layer_id, ParamKind.ATT_BIAS, layer.ctx_bias.tolist())
            + _table_words(layer_id, ParamKind.LUT, layer.lut.tolist()))


def dynamic_conv_param_words(layer_id, layer, p_in, p_out):
    """Parameter words of a ``dynamic_conv1x1`` layer for ``p_in`` × ``p_out`` MAC lanes:
    every kernel's weights and biases in its bank, ``m``/``sh`` (unless it is the
    classifier), the attention matrix and bias, the exp table and the scalars."""
    kernels, cout, cin = layer.weight.shape
    nbi, nbo = -(-cin // p_in), -(-cout // p_out)
    words = []
    for k in range(kernels):
        for w in conv_param_words(layer_id, layer.weight[k].tolist(), layer.bias[k].tolist(),
                                  None, None, p_in, p_out):
            lid, kind, row, lane, data = decode_word(w)
            bank = k * (nbo * nbi if kind == ParamKind.WEIGHT else nbo)
            words.append(encode_word(lid, kind, bank + row, lane,
                                     data - (1 << 32) if data >> 31 else data))
    for kind, values in ((ParamKind.M, layer.m), (ParamKind.SH, layer.sh)):
        if values is not None:
            words += [encode_word(layer_id, kind, o // p_out, o % p_out, int(v))
                      for o, v in enumerate(values.tolist())]
    for r, row in enumerate(layer.att_weight.tolist()):
        words += [encode_word(layer_id, ParamKind.ATT_WEIGHT, r, c, int(v))
                  for c, v in enumerate(row)]
    return (words + _table_words(layer_id, ParamKind.ATT_BIAS, layer.att_bias.tolist())
            + _table_words(layer_id, ParamKind.LUT, layer.exp_lut.tolist())
            + _scalar_words(layer_id, layer))


# --- the overlay engine (issue #10) ------------------------------------------------------------

#: The ``layer`` field of every overlay parameter beat (the overlay is one engine, not a layer).
OVERLAY_LAYER = 0xFF

#: The ``data`` field of an overlay ``GATHER`` beat: one gather-table entry (29 bits). ``bank``
#: is the source channel's parity bank, ``off`` the signed address offset from the output
#: pixel's base address, ``dy``/``dx`` the shift checked against the map's borders.
GATHER_DATA = data.StructLayout({"bank": 1, "off": signed(20), "dy": signed(4), "dx": signed(4)})


def gather_data(bank, off, dy, dx):
    """Pack one gather entry as :data:`GATHER_DATA`:
    ``bank | (off & 0xFFFFF) << 1 | (dy & 0xF) << 21 | (dx & 0xF) << 25``.

    Plain integer arithmetic (the host packs thousands of entries); the layout's own
    ``const`` gives the same bits (tested).

    Raises
    ------
    ValueError
        A field does not fit its width.
    """
    if bank not in (0, 1) or not -(1 << 19) <= off < (1 << 19) \
            or not -8 <= dy < 8 or not -8 <= dx < 8:
        raise ValueError(f"gather entry out of range: bank {bank}, off {off}, dy {dy}, dx {dx} "
                         f"(bank 1 bit, off signed 20, dy/dx signed 4)")
    return int(bank) | (int(off) & 0xFFFFF) << 1 | (int(dy) & 0xF) << 21 | (int(dx) & 0xF) << 25


def gather_fields(value):
    """Inverse of :func:`gather_data`: ``(bank, off, dy, dx)`` with the signed fields
    sign-extended."""
    def sext(v, bits):
        return v - (1 << bits) if v >> (bits - 1) else v
    value = int(value)
    return (value & 1, sext((value >> 1) & 0xFFFFF, 20), sext((value >> 21) & 0xF, 4),
            sext((value >> 25) & 0xF, 4))
