"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

# ---- chapter 01: prompt learning ----
# (chapter 01 solutions go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 solutions go here)


# ---- chapter 03: LoRA math ----
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    import torch.nn.functional as F

    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, lora_A), lora_B)


def lora_num_params(d, k, r):
    """Trainable parameters of LoRA on one (d, k) weight at rank r."""
    return r * k + d * r  # A (r, k) + B (d, r)


def merge_lora(weight, lora_A, lora_B, scaling):
    """(d, k) merged weight W0 + scaling * B A; must not modify `weight`."""
    return weight + scaling * (lora_B @ lora_A)


# ---- chapter 04: LoRA variants ----
# (chapter 04 solutions go here)


# ---- chapter 05: context extension ----
# (chapter 05 solutions go here)


# ---- chapter 06: instruction data ----
# (chapter 06 solutions go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 solutions go here)
