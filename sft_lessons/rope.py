"""Rotary position embedding (RoPE) from scratch, PI, NTK, dynamic NTK, YaRN and ALiBi (第 5 章, notebooks/05_context_extension.ipynb).

Frequencies follow transformers' conventions: `inv_freq[i] = theta ** (-2i / head_dim)` for the head_dim/2 pairs.
Every scaled variant is a hand formula here; tests/test_rope.py checks them against transformers 5.24.
"""

from __future__ import annotations

import math

import torch

LAYOUTS = ("half", "interleaved")


def rope_frequencies(head_dim: int, theta: float = 10_000.0):
    """(head_dim/2,) inverse frequencies theta^(-2i/d): pair i turns by inv_freq[i] radians per token."""
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim!r}")
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def wavelengths(inv_freq):
    """(pairs,) tokens per full turn of each pair: 2*pi / inv_freq."""
    return 2 * math.pi / inv_freq


def rope_cos_sin(positions, inv_freq, attention_scaling: float = 1.0):
    """(seq,) positions -> cos, sin of shape (seq, head_dim) in the half layout (each angle appears twice)."""
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    emb = angles.repeat(1, 2)  # (T, d): [a_0..a_{d/2-1}, a_0..a_{d/2-1}]
    return emb.cos() * attention_scaling, emb.sin() * attention_scaling


def rotate_half(x):
    """(..., d) -> (..., d): [x1, x2] -> [-x2, x1], the 90-degree turn of every (i, i + d/2) pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return __import__("torch").cat((-x2, x1), dim=-1)


def apply_rope(x, positions, inv_freq, layout: str = "half", attention_scaling: float = 1.0):
    """(..., seq, head_dim) queries or keys -> the same shape, pair i at position m turned by m * inv_freq[i].

    layout="half" pairs dimension i with i + d/2 (transformers' Llama); "interleaved" pairs 2i with 2i+1 (the paper).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if x.shape[-1] != 2 * inv_freq.shape[0]:
        raise ValueError(f"head_dim {x.shape[-1]} does not match {inv_freq.shape[0]} frequency pairs")
    if layout == "half":
        cos, sin = rope_cos_sin(positions, inv_freq, attention_scaling)  # (T, d)
        return x * cos + rotate_half(x) * sin
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    cos, sin = angles.cos() * attention_scaling, angles.sin() * attention_scaling
    even, odd = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (..., T, d/2, 2)
    return out.flatten(-2)


def interleaved_to_half(x):
    """(..., d) reorder [x0, x1, x2, x3, ...] -> [x0, x2, ..., x1, x3, ...]: the paper's pairs become halves."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


# ---- scaled frequencies: the hand formulas ----


def linear_pi_frequencies(head_dim: int, theta: float, factor: float):
    """Position interpolation: every frequency divided by factor (same as positions m -> m / factor)."""
    _check_factor(factor)
    return rope_frequencies(head_dim, theta) / factor


def ntk_theta(theta: float, factor: float, head_dim: int) -> float:
    """NTK-aware base: theta * factor^(d/(d-2)), so the slowest pair is interpolated by exactly `factor`."""
    _check_factor(factor)
    return theta * factor ** (head_dim / (head_dim - 2))


def dynamic_ntk_frequencies(
    head_dim: int, theta: float, factor: float, seq_len: int, max_position_embeddings: int
):
    """Dynamic NTK (transformers' formula): base grows with seq_len once it passes max_position_embeddings."""
    _check_factor(factor)
    seq_len = max(seq_len, max_position_embeddings)
    alpha = factor * seq_len / max_position_embeddings - (factor - 1)
    return rope_frequencies(head_dim, ntk_theta(theta, alpha, head_dim))


def yarn_correction_range(head_dim, theta, original_length, beta_fast=32.0, beta_slow=1.0):
    """(low, high) pair indices where a pair makes beta_fast resp. beta_slow turns within original_length."""

    def pair_with_turns(turns):  # solve original_length / wavelength(i) = turns for i
        return head_dim * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = math.floor(pair_with_turns(beta_fast)), math.ceil(pair_with_turns(beta_slow))
    return max(low, 0), min(high, head_dim - 1)


def yarn_frequencies(head_dim, theta, factor, original_length, beta_fast=32.0, beta_slow=1.0):
    """YaRN "NTK-by-parts": (inv_freq, attention_factor); fast pairs kept, slow pairs divided by factor.

    The paper ramps on r = original_length / wavelength; the reference code (and transformers) ramps linearly in the
    pair index between the pairs where r = beta_fast and r = beta_slow. We follow the code.
    """
    _check_factor(factor)
    base = rope_frequencies(head_dim, theta)
    low, high = yarn_correction_range(head_dim, theta, original_length, beta_fast, beta_slow)
    high = high + 0.001 if high == low else high
    pair = torch.arange(head_dim // 2, dtype=torch.float32)
    ramp = ((pair - low) / (high - low)).clamp(0, 1)  # 0: fast pair, kept; 1: slow pair, interpolated
    inv_freq = base * (1 - ramp) + (base / factor) * ramp
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0  # multiplies cos and sin
    return inv_freq, attention_factor


def _check_factor(factor):
    if not factor >= 1:
        raise ValueError(f"scaling factor must be >= 1, got {factor!r}")


# ---- transformers configuration ----

ROPE_METHODS = ("none", "linear", "dynamic", "yarn")


def rope_parameters_for(method: str, factor: float, theta: float, original_length: int):
    """(rope_parameters, max_position_embeddings) to put on a Llama config *before* the model is built."""
    if method not in ROPE_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(ROPE_METHODS)}")
    _check_factor(factor)
    if method == "none":
        return {"rope_type": "default", "rope_theta": theta}, original_length
    if method == "linear":
        params = {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
        return params, int(original_length * factor)
    if method == "dynamic":  # max_position_embeddings stays the *original* length: dynamic reads it as such
        return {"rope_type": "dynamic", "factor": float(factor), "rope_theta": theta}, original_length
    params = {
        "rope_type": "yarn",
        "factor": float(factor),
        "rope_theta": theta,
        "original_max_position_embeddings": original_length,
    }
    return params, int(original_length * factor)


# ---- ALiBi ----


def alibi_slopes(num_heads: int):
    """(heads,) ALiBi slopes: 2^(-8/n), 2^(-16/n), ..., interleaving the next power of two's for other counts."""
    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads!r}")
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (k + 1) / closest) for k in range(closest)]
    extra = [2 ** (-8 * (k + 1) / (2 * closest)) for k in range(0, 2 * (num_heads - closest), 2)]
    return torch.tensor(slopes + extra, dtype=torch.float32)


def alibi_bias(num_heads: int, q_len: int, k_len: int | None = None):
    """(heads, q_len, k_len) additive bias -slope * (i - j), -inf above the diagonal (causal)."""
    k_len = q_len if k_len is None else k_len
    i = torch.arange(k_len - q_len, k_len)[:, None]  # query positions (the last q_len of k_len)
    j = torch.arange(k_len)[None, :]
    distance = (i - j).float()  # (q, k)
    bias = -alibi_slopes(num_heads)[:, None, None] * distance  # (H, q, k)
    return bias.masked_fill(distance < 0, float("-inf"))
