"""Causal depthwise convolution over time, the short convolution of Mamba and Mamba2.

Layout is channels-last, ``x [B, L, D]``, like every other sequence op here; the maths runs in
``x.dtype`` (weight and bias are cast, as autocast would do). The state carried between calls
(decoding, chunked prefill) is the last ``K - 1`` inputs, ``[B, K - 1, D]``; with no state the
sequence is left-padded with zeros, so a call with a state continues a previous call exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ConvResult = tuple[torch.Tensor, torch.Tensor | None]


def _with_history(x: torch.Tensor, weight: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    """``[B, K - 1 + L, D]``: the carried inputs (zeros at the start of a sequence), then ``x``."""
    k = weight.shape[-1]
    if initial_state is None:
        return F.pad(x, (0, 0, k - 1, 0))
    return torch.cat([initial_state.to(x.dtype), x], dim=1)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation {activation!r}: allowed: None, 'silu'")


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> ConvResult:
    """The obvious definition: ``y_t = bias + sum_i weight[:, i] * x_{t - (K - 1) + i}``."""
    k = weight.shape[-1]
    length = x.shape[1]
    padded = _with_history(x, weight, initial_state)
    y = sum(padded[:, i : i + length] * weight[:, i].to(x.dtype) for i in range(k))
    if bias is not None:
        y = y + bias.to(x.dtype)
    final = padded[:, padded.shape[1] - (k - 1) :] if return_final_state else None
    return _activate(y, activation), final


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> ConvResult:
    """Depthwise causal convolution.

    Args:
        x: ``[B, L, D]`` inputs.
        weight: ``[D, K]`` one filter per channel (``nn.Conv1d(D, D, K, groups=D).weight[:, 0]``).
        bias: ``[D]`` or None.
        activation: None or ``"silu"``.
        initial_state: ``[B, K - 1, D]`` the previous inputs, or None for the start of a sequence.
        return_final_state: also return the state after ``x`` (``[B, K - 1, D]``).

    Returns:
        ``(y [B, L, D], final_state or None)``.
    """
    k = weight.shape[-1]
    padded = _with_history(x, weight, initial_state)
    bias = None if bias is None else bias.to(x.dtype)
    y = F.conv1d(padded.transpose(1, 2), weight.to(x.dtype).unsqueeze(1), bias, groups=weight.shape[0])
    y = y.transpose(1, 2)
    final = padded[:, padded.shape[1] - (k - 1) :] if return_final_state else None
    return _activate(y, activation), final
