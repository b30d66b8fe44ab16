"""Training-memory arithmetic (full, LoRA, QLoRA), exact tensor accounting, parameter counts (第 4 章, notebooks/04_lora_variants.ipynb).

The estimator counts bytes; it is a model of memory, not a measurement. Frameworks add workspace, fragmentation and
temporary buffers on top, so a real peak is somewhat higher than `total`.
"""

from __future__ import annotations

import torch

# optimizer -> (state tensors per trainable parameter, bits per state value)
OPTIMIZERS = {
    "adamw": (2, 32),  # exp_avg and exp_avg_sq in fp32
    "adamw_8bit": (2, 8),  # bitsandbytes 8-bit Adam (its small blockwise constants are ignored here)
    "sgd_momentum": (1, 32),
    "sgd": (0, 0),
}
GB = 1e9
GiB = 2**30  # the unit of the memory tables in chapters 4 and 7
MB = 1e6


def estimate_training_memory(
    n_params: float,
    trainable_params: float,
    *,
    weight_bits: int = 32,
    trainable_bits: int | None = None,
    grad_bits: int | None = None,
    optimizer: str = "adamw",
    master_weights: bool = False,
    blocksize: int = 64,
    double_quant: bool = False,
    activation_bytes: float = 0.0,
    unquantized_params: float = 0.0,
) -> dict[str, float]:
    """Bytes of weights, quantization constants, gradients, optimizer states, master weights, activations, total.

    n_params: every parameter of the model being trained, adapters included; trainable_params: those with gradients.
    weight_bits: storage of the frozen parameters: 32, 16, 8 (int8; its per-row constants are ignored) or 4 (NF4,
    with blockwise absmax constants).
    trainable_bits: storage of the trainable ones (default: weight_bits, at least 16; adapters stay 16-bit in QLoRA).
    grad_bits: gradient precision (default: trainable_bits). master_weights: an extra fp32 copy of every trainable
    parameter (mixed-precision training). double_quant: 8-bit absmax constants in blocks of 256 (QLoRA's DQ).
    activation_bytes: from `activation_memory` or a measurement; it does not depend on how many parameters train.
    unquantized_params: frozen parameters a 4- or 8-bit model keeps at 16 bits (bitsandbytes replaces only the
    nn.Linear layers inside the blocks, so the embeddings and lm_head stay 16-bit); no quantization constants.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if weight_bits not in (4, 8, 16, 32):
        raise ValueError(f"weight_bits must be 4, 8, 16 or 32, got {weight_bits!r}")
    if not 0 <= trainable_params <= n_params:
        raise ValueError(f"need 0 <= trainable_params <= n_params, got {trainable_params!r} and {n_params!r}")
    if not 0 <= unquantized_params <= n_params - trainable_params:
        raise ValueError(
            f"need 0 <= unquantized_params <= frozen parameters ({n_params - trainable_params!r}), "
            f"got {unquantized_params!r}"
        )
    trainable_bits = trainable_bits or max(weight_bits, 16)
    grad_bits = grad_bits or trainable_bits
    kept_bits = max(weight_bits, 16)  # the unquantized frozen parameters
    frozen = n_params - trainable_params - unquantized_params  # stored at weight_bits
    constants = 0.0
    if weight_bits == 4:  # one fp32 absmax per block, or 8-bit ones plus an fp32 scale per 256 blocks
        per_block = 8 / blocksize + 32 / (blocksize * 256) if double_quant else 32 / blocksize
        constants = frozen * per_block / 8
    states, state_bits = OPTIMIZERS[optimizer]
    out = {
        "weights": frozen * weight_bits / 8 + unquantized_params * kept_bits / 8
        + trainable_params * trainable_bits / 8,
        "quant_constants": constants,
        "gradients": trainable_params * grad_bits / 8,
        "optimizer_states": trainable_params * states * state_bits / 8,
        "master_weights": trainable_params * 4 if master_weights else 0.0,
        "activations": float(activation_bytes),
    }
    out["total"] = sum(out.values())
    return out


def activation_memory(
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    n_layers: int,
    n_heads: int,
    bytes_per_value: int = 2,
    checkpointing: bool = False,
) -> float:
    """Bytes saved for backward by a GPT-style transformer: s*b*h*(34 + 5*a*s/h) per layer at 16 bits.

    The formula is Korthikanti et al. 2022 (arXiv 2205.05198, eq. 1; MLP 4h, GELU, dropout, no recomputation).
    With checkpointing only each layer's input (2*s*b*h bytes at 16 bits) is kept, plus one layer recomputed.
    """
    s, b, h, a = seq_len, batch_size, hidden_size, n_heads
    per_layer = s * b * h * (34 + 5 * a * s / h) * bytes_per_value / 2
    if checkpointing:
        return n_layers * s * b * h * bytes_per_value + per_layer
    return n_layers * per_layer


def lora_parameter_count(shapes, r: int) -> int:
    """LoRA parameters for linear layers of (out_features, in_features): r*(d + k) each (A is r x k, B is d x r)."""
    return sum(r * (d + k) for d, k in shapes)


def format_breakdown(breakdown: dict[str, float], unit: float = GB) -> dict[str, float]:
    """The same dict in `unit` (GB by default), rounded to 3 significant decimals."""
    return {key: round(value / unit, 3) for key, value in breakdown.items()}


# ---- exact accounting of a real model ----


def tensor_bytes(tensors) -> int:
    """Total bytes of an iterable of tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model, trainable_only: bool = False) -> int:
    """Bytes of a model's parameters (and buffers, unless trainable_only)."""
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    buffers = [] if trainable_only else list(model.buffers())
    return tensor_bytes(params) + tensor_bytes(buffers)


def count_parameters(model, trainable_only: bool = True) -> int:
    """Number of parameters: the trainable ones (default) or all of them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of every tensor held in optimizer.state (e.g. Adam's exp_avg and exp_avg_sq)."""
    return sum(
        tensor_bytes(v for v in state.values() if isinstance(v, torch.Tensor))
        for state in optimizer.state.values()
    )


def saved_activation_bytes(model, **batch) -> int:
    """Bytes of the tensors autograd saves for backward in one training-mode forward (parameters excluded)."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_storages and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    model.train(was_training)
    return total


def measured_training_memory(model, optimizer, batch) -> dict[str, int]:
    """Bytes of weights, gradients (one per trainable parameter), optimizer state and saved activations, and total."""
    out = {
        "weights": model_bytes(model),
        "gradients": model_bytes(model, trainable_only=True),
        "optimizer_states": optimizer_state_bytes(optimizer),
        "activations": saved_activation_bytes(model, **batch),
    }
    out["total"] = sum(out.values())
    return out
