"""The pixel-stream convention shared by every shiftacc block (DESIGN.md §3).

A feature map travels in raster order (y, then x). A pixel of C channels is
``ceil(C / P)`` *beats* of P lanes: beat ``b`` lane ``l`` carries channel ``b * P + l``.
Lanes past C in the last beat are padding: a producer may put anything there and a consumer
must ignore them (never let them reach a result). ``last`` is high on the final beat of an
image. Shapes (H, W, C) are elaboration parameters of each block, so blocks count beats
themselves; ``last`` lets a consumer check framing and lets the top end an image.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, stream

__all__ = ["pixel_layout", "pixel_stream", "beats_per_pixel", "require_positive"]


def beats_per_pixel(channels, lanes):
    """Beats needed to carry ``channels`` values over ``lanes`` lanes."""
    return -(-channels // lanes)


def pixel_layout(lanes, bits, *, is_signed=False):
    """Payload of a pixel stream: ``data`` (``lanes`` values of ``bits`` bits) and ``last``.

    Parameters
    ----------
    lanes : int
        Values per beat (P).
    bits : int
        Width of one value.
    is_signed : bool
        Signed lanes (raw accumulators / logits) instead of unsigned activations.
    """
    elem = signed(bits) if is_signed else unsigned(bits)
    return data.StructLayout({"data": data.ArrayLayout(elem, lanes), "last": 1})


def pixel_stream(lanes, bits, *, is_signed=False):
    """``stream.Signature`` of a pixel stream; see :func:`pixel_layout`."""
    return stream.Signature(pixel_layout(lanes, bits, is_signed=is_signed))


def require_positive(block, **values):
    """Raise a ``ValueError`` naming ``block`` and the field unless every value is an int >= 1.

    Elaboration parameters (shapes, lane counts, bit widths) of every block go through this,
    so a bad one fails at construction with the same wording everywhere.
    """
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{block}: {name} must be a positive integer, got {value!r}")
