"""The in-memory form of one artifact layer, and the error every artifact problem raises.

Kept apart from :mod:`models.artifact` (loading and writing) and :mod:`models.ops` (what each
op means) so that both can use them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ArtifactError", "Layer"]


class ArtifactError(ValueError):
    """An artifact breaks the DESIGN.md §2 contract; the message says where and how."""


@dataclass
class Layer:
    """One layer of an integer shift network.

    Which attributes an op uses is defined by its entry in :data:`models.ops.OPS`; the others
    stay at their defaults.

    Parameters
    ----------
    op : str
        A key of :data:`models.ops.OPS` (``replicate``, ``shift``, ``conv1x1``, ``maxpool2``,
        ``gap``; version 2: ``channel_attention``, ``dynamic_conv1x1``,
        ``spatial_attention``).
    factor : int, optional
        ``replicate`` only: the replication factor E.
    shifts : ndarray of int8 [C, 2], optional
        ``shift`` only: per-channel (dy, dx).
    stride : int
        ``conv1x1`` only: 1 or 2.
    weight : ndarray of int8 [cout, cin], optional
    bias : ndarray of int32 [cout], optional
    m : ndarray of uint16 [cout] or int, optional
        Requant multiplier, per output channel for ``conv1x1``, a single int for ``gap``.
        ``None`` for the last ``conv1x1`` (raw int32 logits).
    sh : ndarray of uint8 [cout] or int, optional
        Requant right shift, same convention as ``m``.
    keys : dict
        Array name in the ``.npz`` for each array field (as read; writing names arrays
        ``l{i}.{field}``).

    Version-2 ops (attention, DESIGN.md §1) use these besides ``stride``, ``weight``,
    ``bias``, ``m``, ``sh`` (``bias`` is a single int for ``channel_attention`` and
    ``spatial_attention``; ``weight``/``bias`` are ``[K, cout, cin]``/``[K, cout]`` for
    ``dynamic_conv1x1``):

    pool_m, pool_sh, z_m, z_sh : int, optional
        ``channel_attention`` and ``spatial_attention``: requant pairs of the pooled
        context and of the attention logit.
    kernel : ndarray of int8 [k], optional
        ``channel_attention``: the 1-D convolution across channels.
    lut : ndarray of uint16 [256], optional
        ``channel_attention`` and ``spatial_attention``: the sigmoid table, entries in
        [0, 256].
    ctx_weight : ndarray of int8 [C, C], optional
    ctx_bias : ndarray of int32 [C], optional
    ctx_m, ctx_sh : int, optional
        ``spatial_attention``: the projection of the pooled context and its requant.
    att_step, att_pool_m, att_pool_sh, att_m, att_sh : int, optional
    att_weight : ndarray of int8 [K, cin], optional
    att_bias : ndarray of int32 [K], optional
    exp_lut : ndarray of uint16 [256], optional
        ``dynamic_conv1x1``: the kernel attention (sampling interval, pool requant, logits,
        their requant and the exponential table).
    """

    op: str
    factor: int | None = None
    shifts: np.ndarray | None = None
    stride: int = 1
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    m: object = None
    sh: object = None
    keys: dict = field(default_factory=dict)
    pool_m: int | None = None
    pool_sh: int | None = None
    z_m: int | None = None
    z_sh: int | None = None
    kernel: np.ndarray | None = None
    lut: np.ndarray | None = None
    ctx_weight: np.ndarray | None = None
    ctx_bias: np.ndarray | None = None
    ctx_m: int | None = None
    ctx_sh: int | None = None
    att_step: int | None = None
    att_pool_m: int | None = None
    att_pool_sh: int | None = None
    att_m: int | None = None
    att_sh: int | None = None
    att_weight: np.ndarray | None = None
    att_bias: np.ndarray | None = None
    exp_lut: np.ndarray | None = None

    @property
    def cin(self):
        """Input channels of a ``conv1x1`` or ``dynamic_conv1x1`` (None for other ops)."""
        return None if self.weight is None else int(self.weight.shape[-1])

    @property
    def cout(self):
        """Output channels of a ``conv1x1`` or ``dynamic_conv1x1`` (None for other ops)."""
        return None if self.weight is None else int(self.weight.shape[-2])

    @property
    def kernels(self):
        """Kernels K of a ``dynamic_conv1x1`` (None for other ops)."""
        return int(self.weight.shape[0]) if self.weight is not None and \
            self.weight.ndim == 3 else None

    @property
    def requant(self):
        """True when this layer ends in requant (every conv but the classifier, every gap)."""
        return self.m is not None
