"""Helpers shared by the sparse-attention tests (imported by module name: tests/ops is on sys.path)."""

import torch


def right_padded(lengths, n):
    """[B, n] bool mask: sequence b is real for its first lengths[b] positions."""
    return torch.arange(n)[None] < torch.tensor(lengths)[:, None]


def as_dense(idx, valid, n):
    """Key lists idx/valid [B, L, W] -> the [B, L, n] bool mask they select."""
    dense = torch.zeros(*idx.shape[:2], n + 1, dtype=torch.bool)
    dense.scatter_(2, torch.where(valid, idx, n), True)
    return dense[..., :n]
