"""Blockwise 4-bit quantization from scratch: NF4 levels, absmax blocks, double quantization (第 4 章, notebooks/04_lora_variants.ipynb).

Codes are kept one per uint8 (easy to read); `pack_4bit` packs two per byte the way bitsandbytes stores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .device import get_device
from .models import quiet_from_pretrained, resolve

NF4_OFFSET = 0.9677083  # the probability level of the outermost quantile (bitsandbytes create_normal_map)
BLOCKSIZE = 64  # QLoRA's first-level block size
DQ_BLOCKSIZE = 256  # block size for the second (double) quantization of the absmax constants
FORMATS = ("nf4", "fp4", "int8")


def nf4_levels(offset: float = NF4_OFFSET):
    """(16,) sorted NF4 code book in [-1, 1]: N(0,1) quantiles, 7 negative, an exact 0 and 8 positive values."""
    # 8 positive quantiles between `offset` and the median, 7 negative ones; the median itself is the shared 0.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # (8,)
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # (7,)
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).float()


def fp4_levels():
    """(16,) sorted FP4 (1 sign, 2 exponent, 1 mantissa bit) code book in [-1, 1], bitsandbytes' variant (+0 and -0)."""
    # subnormals 0 and 0.0625, then 2^e * {1, 1.5}; divided by 12 so the largest is 1
    magnitudes = torch.tensor([0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    return (torch.cat([-magnitudes, magnitudes]) / 12.0).sort().values


def int8_levels():
    """(255,) symmetric linear int8 code book k/127, k = -127..127 (absmax int8 quantization)."""
    return torch.arange(-127, 128, dtype=torch.float32) / 127


def levels_for(fmt: str):
    """The code book of a format: 'nf4', 'fp4' or 'int8'."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return {"nf4": nf4_levels, "fp4": fp4_levels, "int8": int8_levels}[fmt]()


@dataclass
class DoubleQuantState:
    """Second-level quantization of absmax: int8 codes, one fp32 scale per DQ block, and the subtracted mean."""

    codes: object  # (n_blocks,) int8
    scales: object  # (ceil(n_blocks / dq_blocksize),) float32
    offset: float
    dq_blocksize: int = DQ_BLOCKSIZE


@dataclass
class QuantizedTensor:
    """A blockwise-quantized tensor: one code per value (uint8), one absmax per block, the code book and shape."""

    codes: object  # (n_padded,) uint8, index into `levels`
    absmax: object  # (n_blocks,) float32, or None when double-quantized
    levels: object  # (n_levels,) float32 code book
    shape: tuple
    blocksize: int
    double: DoubleQuantState | None = None

    @property
    def bits_per_code(self) -> int:
        return max(1, (len(self.levels) - 1).bit_length())

    def storage_bytes(self) -> int:
        """Bytes to store it: packed codes plus quantization constants."""
        n = 1
        for s in self.shape:
            n *= s
        code_bytes = (n * self.bits_per_code + 7) // 8
        if self.double is None:
            return code_bytes + 4 * len(self.absmax)
        return code_bytes + len(self.double.codes) + 4 * len(self.double.scales) + 4


def _blocks(x, blocksize: int):
    """Flatten and zero-pad to whole blocks -> (n_blocks, blocksize); zeros never change a block's absmax."""
    if blocksize <= 0:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % blocksize
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, blocksize)


def nearest_level(scaled, levels):
    """Index of the nearest code-book value for each element of `scaled` (ties go to the lower level)."""
    midpoints = (levels[1:] + levels[:-1]) / 2  # decision boundaries between sorted levels
    return torch.bucketize(scaled.contiguous(), midpoints.to(scaled.device)).to(torch.uint8)


def quantize_blockwise(x, levels, blocksize: int = BLOCKSIZE) -> QuantizedTensor:
    """Absmax-scale each block of `blocksize` values into [-1, 1], then store the nearest level's index."""
    blocks = _blocks(x, blocksize)  # (n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    scaled = blocks / absmax.clamp(min=1e-12).unsqueeze(1)  # all in [-1, 1]
    codes = nearest_level(scaled.reshape(-1), levels)
    return QuantizedTensor(codes, absmax, levels, tuple(x.shape), blocksize)


def dequantize_blockwise(q: QuantizedTensor):
    """Code-book lookup times each block's absmax, trimmed and reshaped -> a float32 tensor of q.shape."""
    absmax = q.absmax if q.double is None else double_dequantize(q.double)
    values = q.levels.to(q.codes.device)[q.codes.long()].view(-1, q.blocksize)  # (n_blocks, blocksize)
    flat = (values * absmax.unsqueeze(1)).reshape(-1)
    n = 1
    for s in q.shape:
        n *= s
    return flat[:n].reshape(q.shape)


def double_quantize(absmax, dq_blocksize: int = DQ_BLOCKSIZE) -> DoubleQuantState:
    """Quantize the fp32 absmax constants again: subtract their mean, then int8 absmax blocks of `dq_blocksize`."""
    offset = absmax.float().mean().item()
    blocks = _blocks(absmax - offset, dq_blocksize)  # (n_dq_blocks, dq_blocksize)
    scales = blocks.abs().amax(dim=1).clamp(min=1e-12)
    codes = torch.round(blocks / scales.unsqueeze(1) * 127).to(torch.int8).reshape(-1)[: absmax.numel()]
    return DoubleQuantState(codes, scales, offset, dq_blocksize)


def double_dequantize(state: DoubleQuantState):
    """(n_blocks,) float32 absmax reconstructed from its int8 codes, scales and offset."""
    n = state.codes.numel()
    pad = (-n) % state.dq_blocksize
    codes = torch.nn.functional.pad(state.codes.float(), (0, pad)).view(-1, state.dq_blocksize)
    return (codes / 127 * state.scales.unsqueeze(1)).reshape(-1)[:n] + state.offset


def nf4_quantize(x, blocksize: int = BLOCKSIZE, double_quant: bool = False) -> QuantizedTensor:
    """NF4 with blockwise absmax; double_quant=True also quantizes the absmax constants (QLoRA's DQ)."""
    q = quantize_blockwise(x, nf4_levels(), blocksize)
    if double_quant:
        q.double = double_quantize(q.absmax)
        q.absmax = None
    return q


def nf4_dequantize(q: QuantizedTensor):
    """The float32 tensor an NF4 QuantizedTensor stands for."""
    return dequantize_blockwise(q)


def bits_per_parameter(
    code_bits: int = 4,
    blocksize: int = BLOCKSIZE,
    double_quant: bool = False,
    dq_blocksize: int = DQ_BLOCKSIZE,
) -> float:
    """Storage cost per weight: the code plus its share of the constants (4.5 for NF4/64, 4.127 with DQ)."""
    if not double_quant:
        return code_bits + 32 / blocksize
    return code_bits + 8 / blocksize + 32 / (blocksize * dq_blocksize)


def pack_4bit(codes):
    """(2n,) uint8 codes in 0..15 -> (n,) bytes, first code in the high nibble (bitsandbytes' layout)."""
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed):
    """(n,) bytes -> (2n,) uint8 codes, the inverse of pack_4bit."""
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1)


def quantization_error(x, fmt: str = "nf4", blocksize: int = BLOCKSIZE) -> dict:
    """Round-trip error of one format on tensor x: mean abs error, RMSE and RMSE relative to x's RMS."""
    q = quantize_blockwise(x, levels_for(fmt), blocksize)
    diff = dequantize_blockwise(q) - x.detach().float()
    rmse = diff.pow(2).mean().sqrt().item()
    rms = x.detach().float().pow(2).mean().sqrt().item()
    return {
        "format": fmt,
        "mae": diff.abs().mean().item(),
        "rmse": rmse,
        "relative_rmse": rmse / max(rms, 1e-12),
    }


def import_bitsandbytes():
    """Import bitsandbytes with its CPU 'kernels-community' fallback warning silenced."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


def keep_4bit_weights_unpacked(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel -> number of layers changed.

    bitsandbytes 0.50, on a CPU with AVX512-BF16, repacks a Linear4bit weight the first time the layer runs in eval mode
    without gradients. From then on matmul_4bit calls that kernel outside autograd, so the frozen layer passes no
    gradient back to its input (the forward stays right): LoRA layers below it learn only through the residual
    connections. Call this before evaluating a model you will train; on GPUs and other CPUs it changes nothing.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def bnb_quantize_4bit(x, quant_type: str = "nf4", blocksize: int = BLOCKSIZE, double_quant: bool = False):
    """bitsandbytes' own 4-bit round trip -> (codes (n,) uint8 unpacked, dequantized tensor, QuantState)."""
    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"bitsandbytes 4-bit quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    F = import_bitsandbytes().functional
    packed, state = F.quantize_4bit(
        x.detach().float().contiguous(),
        blocksize=blocksize,
        compress_statistics=double_quant,
        quant_type=quant_type,
    )
    codes = unpack_4bit(packed.reshape(-1))[: x.numel()]
    return codes, F.dequantize_4bit(packed, state), state


def load_quantized_causal_lm(name: str, quantization_config, device=None):
    """(model, tokenizer) with bitsandbytes-quantized linear layers, e.g. a BitsAndBytesConfig(load_in_4bit=True)."""
    import_bitsandbytes()
    path = resolve(name)
    device = torch.device(device or get_device())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    compute = getattr(quantization_config, "bnb_4bit_compute_dtype", None) or torch.float32
    target = (device.index or 0) if device.type == "cuda" else device.type  # where the weights go
    model = quiet_from_pretrained(
        AutoModelForCausalLM,
        path,
        quantization_config=quantization_config,
        dtype=compute,
        device_map={"": target},
    )
    return model.eval(), tokenizer


def quantized_footprint_bytes(model) -> int:
    """Parameter and buffer bytes plus the 4-bit quantization constants bitsandbytes keeps beside the weights."""
    total = model.get_memory_footprint()
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is None:
            continue
        total += state.absmax.numel() * state.absmax.element_size()
        if getattr(state, "state2", None) is not None:  # double quantization: fp32 second-level scales
            total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total
