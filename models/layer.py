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
        ``gap``).
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

    @property
    def cin(self):
        """Input channels of a ``conv1x1`` (None for other ops)."""
        return None if self.weight is None else int(self.weight.shape[1])

    @property
    def cout(self):
        """Output channels of a ``conv1x1`` (None for other ops)."""
        return None if self.weight is None else int(self.weight.shape[0])

    @property
    def requant(self):
        """True when this layer ends in requant (every conv but the classifier, every gap)."""
        return self.m is not None
