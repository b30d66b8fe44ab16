"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

# ---- chapter 01: prompt learning ----
# (chapter 01 solutions go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 solutions go here)


# ---- chapter 03: LoRA math ----
# (chapter 03 solutions go here)


# ---- chapter 04: LoRA variants ----
def nf4_dequantize_answer(codes, absmax, levels, blocksize, shape):
    """(n_padded,) uint8 codes, (n_blocks,) absmax, (16,) levels -> float32 tensor of `shape`."""
    values = levels[codes.long()].view(-1, blocksize)  # (n_blocks, blocksize) in [-1, 1]
    flat = (values * absmax.unsqueeze(1)).reshape(-1)
    n = 1
    for size in shape:
        n *= size
    return flat[:n].reshape(shape)


def lora_trainable_params(model, target_modules, r):
    """LoRA parameters peft would add for nn.Linear modules whose name ends with one of target_modules."""
    import torch

    return sum(
        r * (module.in_features + module.out_features)  # A is r x in, B is out x r
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in target_modules
    )


# ---- chapter 05: context extension ----
# (chapter 05 solutions go here)


# ---- chapter 06: instruction data ----
# (chapter 06 solutions go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 solutions go here)
