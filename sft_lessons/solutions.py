"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

# ---- chapter 01: prompt learning ----
# (chapter 01 solutions go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 solutions go here)


# ---- chapter 03: LoRA math ----
# (chapter 03 solutions go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 solutions go here)


# ---- chapter 05: context extension ----
def linear_pi_inv_freq(head_dim: int, theta: float, factor: float):
    """(head_dim/2,) RoPE inverse frequencies after linear position interpolation by `factor`."""
    import torch

    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return inv_freq / factor  # angle(m) = m * theta_i / s: position m behaves like m / s


def ntk_scaled_theta(theta: float, factor: float, head_dim: int) -> float:
    """The NTK-aware base theta * factor^(d/(d-2)): the slowest pair slows by exactly `factor`."""
    return theta * factor ** (head_dim / (head_dim - 2))


def alibi_slopes(num_heads: int):
    """(num_heads,) ALiBi slopes, as in the paper's reference code."""
    import math

    import torch

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (k + 1) / closest) for k in range(closest)]
    extra = [2 ** (-8 * p / (2 * closest)) for p in range(1, 2 * (num_heads - closest), 2)]
    return torch.tensor(slopes + extra)


# ---- chapter 06: instruction data ----
# (chapter 06 solutions go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 solutions go here)
