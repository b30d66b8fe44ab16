"""LoRA from scratch, with DeepSpeed-Chat's public names (第 3 章, notebooks/03_lora_math.ipynb).

`LinearLayer_LoRA`, `convert_linear_layer_to_lora`, ... (chapter 7 uses them as DeepSpeed-Chat does).

The layer computes h = W0 x + s * B A x with W0 (d, k) frozen, A (r, k), B (d, r) and s = lora_scaling / lora_dim.
Like DeepSpeed-Chat it stores the factors transposed: `lora_right_weight` = A^T (k, r), `lora_left_weight` = B^T (r, d),
so the forward pass is x @ A^T @ B^T without transposes. Scaling convention: DeepSpeed-Chat's `lora_scaling` is peft's
`lora_alpha` (s = lora_alpha / r in peft, lora_scaling / lora_dim here).

Compared with 教材原文's copy of DeepSpeed-Chat's layer (chapter 3 runs that class as printed): the copy imports
`torch.functional`, which has no `linear`, so its forward raises AttributeError (DeepSpeed-Chat's own
dschat/utils/module/lora.py imports `torch.nn.functional`); its eval()/train() overrides switch the dropout but never
call super() or return self, so the layer's `training` flag stays True and `layer.eval()` returns None. It also sets
A's initial scale apart from the authors' loralib and peft: Kaiming-uniform on the transposed (k, r) tensor reads
fan_in = r, a bound of 1/sqrt(r) instead of 1/sqrt(k) (DeepSpeed-Chat's file has these two as well). Kept from it:
the ValueError for lora_dim <= 0, the ZeRO-3 `ds_shape` lookup, the `fuse_lora` guard, the frozen base weight, `bias`
passed to `F.linear` (None allowed), and the move to the base weight's device and dtype (here in the constructor).
Changed: the lora_dim error names the problem and also rejects a non-integer; `s` multiplies the (..., r)
intermediate instead of the (..., d) output. Added: an error for a module name that matches nothing, the correctly
spelt `lora_dropout` beside `lora_droppout`, and `lora_state_dict`, a name from loralib (microsoft/LoRA loralib/utils.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .device import progress
from .memory import count_parameters  # noqa: F401  (chapter 3 counts with it: lora.count_parameters)

LORA_KEYS = ("lora_right_weight", "lora_left_weight")


def _resolve_dropout(lora_droppout: float, lora_dropout: float | None) -> float:
    """One dropout value from 教材原文's misspelt keyword (`lora_droppout`) and the correct one."""
    if lora_dropout is None:
        return lora_droppout
    if lora_droppout not in (0, lora_dropout):
        raise ValueError(
            f"got lora_droppout={lora_droppout!r} and lora_dropout={lora_dropout!r}; pass only one"
        )
    return lora_dropout


class LinearLayer_LoRA(nn.Module):
    """(..., k) -> (..., d): F.linear(x, W0, bias) + s * dropout(x) @ A^T @ B^T, with W0 frozen."""

    def __init__(self, weight, lora_dim=0, lora_scaling=1, lora_droppout=0, bias=None, *, lora_dropout=None):
        super().__init__()
        dropout = _resolve_dropout(lora_droppout, lora_dropout)
        if isinstance(lora_dim, bool) or not isinstance(lora_dim, int) or lora_dim <= 0:
            raise ValueError(f"lora_dim must be a positive integer (the rank r), got {lora_dim!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {dropout!r}")
        rows, columns = (
            getattr(weight, "ds_shape", None) or weight.shape
        )  # ZeRO-3 keeps the full shape in ds_shape
        if not isinstance(weight, nn.Parameter):
            weight = nn.Parameter(weight, requires_grad=False)
        weight.requires_grad_(False)  # the base weight is frozen
        self.weight, self.bias = weight, bias
        self.lora_dim, self.lora_alpha = lora_dim, lora_scaling
        self.lora_scaling = lora_scaling / lora_dim  # the effective scale s, as in DeepSpeed-Chat
        factory = dict(device=weight.device, dtype=weight.dtype)
        self.lora_right_weight = nn.Parameter(torch.empty(columns, lora_dim, **factory))  # A^T (k, r)
        self.lora_left_weight = nn.Parameter(torch.empty(lora_dim, rows, **factory))  # B^T (r, d)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fuse_lora = False
        self.reset_parameters()

    @property
    def lora_A(self) -> torch.Tensor:
        """A as in the paper, (r, k); a view of lora_right_weight."""
        return self.lora_right_weight.t()

    @property
    def lora_B(self) -> torch.Tensor:
        """B as in the paper, (d, r); a view of lora_left_weight."""
        return self.lora_left_weight.t()

    def reset_parameters(self) -> None:
        """A ~ Kaiming-uniform with fan_in = k (peft's bound 1/sqrt(k)), B = 0, so the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_right_weight.t(), a=math.sqrt(5))  # init A (r, k) through its view
        nn.init.zeros_(self.lora_left_weight)

    def delta_weight(self) -> torch.Tensor:
        """s * B @ A, shape (d, k): the update that fusing adds to W0."""
        return self.lora_scaling * (self.lora_left_weight.t() @ self.lora_right_weight.t())

    @torch.no_grad()
    def fuse_lora_weight(self) -> LinearLayer_LoRA:
        """W0 += s * B A (once; calling it again does nothing). Returns self."""
        if not self.fuse_lora:
            self.weight.add_(self.delta_weight())
            self.fuse_lora = True
        return self

    @torch.no_grad()
    def unfuse_lora_weight(self) -> LinearLayer_LoRA:
        """W0 -= s * B A (only if fused; idempotent). Returns self."""
        if self.fuse_lora:
            self.weight.sub_(self.delta_weight())
            self.fuse_lora = False
        return self

    fuse, unfuse = fuse_lora_weight, unfuse_lora_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)  # (..., d)
        if self.fuse_lora:
            if self.training and torch.is_grad_enabled() and self.lora_right_weight.requires_grad:
                raise RuntimeError(
                    "LoRA weights are fused into W0: call unfuse_lora_weight() before training"
                )
            return out
        h = self.lora_dropout(x) @ self.lora_right_weight  # (..., r)
        return out + (h * self.lora_scaling) @ self.lora_left_weight  # scale the small (..., r) tensor

    def extra_repr(self) -> str:
        d, k = self.lora_left_weight.shape[1], self.lora_right_weight.shape[0]
        return (
            f"in_features={k}, out_features={d}, lora_dim={self.lora_dim}, lora_scaling={self.lora_alpha} "
            f"(s={self.lora_scaling:g}), bias={self.bias is not None}, fused={self.fuse_lora}"
        )


def _matches(name: str, part_module_name: str | Iterable[str]) -> bool:
    parts = [part_module_name] if isinstance(part_module_name, str) else list(part_module_name)
    return any(part in name for part in parts)


def convert_linear_layer_to_lora(
    model: nn.Module, part_module_name, lora_dim=0, lora_scaling=1, lora_dropout=0, *, lora_droppout=None
) -> nn.Module:
    """Replace every nn.Linear whose name contains part_module_name (a str or several) by a LinearLayer_LoRA."""
    dropout = _resolve_dropout(lora_dropout, lora_droppout)
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    targets = [name for name in linears if _matches(name, part_module_name)]
    if not targets:
        sample = ", ".join(linears[:8]) + (", ..." if len(linears) > 8 else "") if linears else "none"
        raise ValueError(
            f"part_module_name={part_module_name!r} matches no nn.Linear; "
            f"{len(linears)} candidates, e.g. {sample}"
        )
    for name in targets:
        linear = model.get_submodule(name)
        lora = LinearLayer_LoRA(linear.weight, lora_dim, lora_scaling, bias=linear.bias, lora_dropout=dropout)
        lora.train(linear.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, lora)
    return model


def lora_layers(model: nn.Module) -> dict[str, LinearLayer_LoRA]:
    """{module name: LinearLayer_LoRA} for every LoRA layer in the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearLayer_LoRA)}


def convert_lora_to_linear_layer(model: nn.Module) -> nn.Module:
    """Fuse every LoRA layer (W0 += s B A) in place, as DeepSpeed-Chat does before saving; returns model."""
    for layer in lora_layers(model).values():
        params = [layer.weight, layer.bias, layer.lora_right_weight, layer.lora_left_weight]
        params = [p for p in params if p is not None and hasattr(p, "ds_id")]
        if params:  # ZeRO-3: gather the partitioned parameters, fuse, let rank 0's result be scattered back
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                layer.fuse_lora_weight()
        else:
            layer.fuse_lora_weight()
    return model


def unfuse_lora_layers(model: nn.Module) -> nn.Module:
    """Undo convert_lora_to_linear_layer (W0 -= s B A in every fused layer); returns model."""
    for layer in lora_layers(model).values():
        layer.unfuse_lora_weight()
    return model


def only_optimize_lora_parameters(model: nn.Module, force_optimize_params: Iterable[str] = ()) -> nn.Module:
    """Freeze every parameter except the LoRA factors (and any named in force_optimize_params); returns model."""
    forced = set(force_optimize_params)
    for name, param in model.named_parameters():
        param.requires_grad_(any(key in name for key in LORA_KEYS) or name in forced)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors only: {'...lora_right_weight': (k, r), '...lora_left_weight': (r, d)}."""
    return {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in LORA_KEYS}


def copy_lora_to_peft(model: nn.Module, peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Copy our A, B into the same-named peft LoRA layers (lora_A = A, lora_B = B); returns how many were copied."""
    ours, copied = lora_layers(model), 0
    for name, module in peft_model.base_model.model.named_modules():
        if name in ours and hasattr(module, "lora_A"):
            theirs_s, ours_s = module.scaling[adapter_name], ours[name].lora_scaling
            if not math.isclose(theirs_s, ours_s):
                raise ValueError(
                    f"{name}: peft scaling {theirs_s} != ours {ours_s}; use lora_alpha = lora_scaling"
                )
            with torch.no_grad():
                module.lora_A[adapter_name].weight.copy_(ours[name].lora_A)  # (r, k)
                module.lora_B[adapter_name].weight.copy_(ours[name].lora_B)  # (d, r)
            copied += 1
    if copied != len(ours):
        raise ValueError(
            f"copied {copied} of {len(ours)} LoRA layers; do both models target the same modules?"
        )
    return copied


# ---- the parameter arithmetic ----


def lora_num_params(d: int, k: int, r: int) -> int:
    """Trainable parameters of one LoRA pair: B (d, r) + A (r, k) = r (d + k) (教材原文's d*r + r*d holds only when d = k)."""
    return r * (d + k)


def decoder_linear_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """{projection: (d_out, k_in)} of one decoder layer, from a llama or opt config dict."""
    h, kind = config["hidden_size"], config.get("model_type")
    if kind == "llama":
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or h // heads
        kv = config.get("num_key_value_heads") or heads
        ffn = config["intermediate_size"]
        return {
            "q_proj": (heads * head_dim, h),
            "k_proj": (kv * head_dim, h),
            "v_proj": (kv * head_dim, h),
            "o_proj": (h, heads * head_dim),
            "gate_proj": (ffn, h),
            "up_proj": (ffn, h),
            "down_proj": (h, ffn),
        }
    if kind == "opt":
        ffn = config["ffn_dim"]
        return {
            "q_proj": (h, h),
            "k_proj": (h, h),
            "v_proj": (h, h),
            "out_proj": (h, h),
            "fc1": (ffn, h),
            "fc2": (h, ffn),
        }
    raise ValueError(f"model_type {kind!r} not supported; valid: 'llama', 'opt'")


def lora_count_table(config: dict, ranks: Iterable[int], targets: Iterable[str] | None = None) -> list[dict]:
    """Rows {r, per_layer, per_model, full_per_model, percent}: LoRA vs full weights of the targeted projections."""
    shapes = decoder_linear_shapes(config)
    targets = list(targets or shapes)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"unknown targets {unknown}; valid: {', '.join(shapes)}")
    layers = config["num_hidden_layers"]
    full = layers * sum(d * k for name, (d, k) in shapes.items() if name in targets)
    rows = []
    for r in ranks:
        per_layer = sum(lora_num_params(d, k, r) for name, (d, k) in shapes.items() if name in targets)
        rows.append(dict(r=r, per_layer=per_layer, per_model=per_layer * layers, full_per_model=full,
                         percent=100 * per_layer * layers / full))  # fmt: skip
    return rows


# ---- why low rank is enough ----


def energy_captured(singular_values: torch.Tensor, r: int) -> float:
    """Share of the squared Frobenius norm held by the top-r singular values."""
    energy = singular_values.double() ** 2
    return float(energy[:r].sum() / energy.sum())


def full_finetune_deltas(
    model: nn.Module, module_name: str, batches: list[dict], steps: list[int], lr: float = 1e-4
) -> tuple[dict[int, torch.Tensor], list[float]]:
    """Train only `module_name`'s weight fully; returns ({step: W - W0 (d, k) after that many steps}, losses).

    One AdamW run of max(steps) steps (batch i is batches[i % len(batches)]); W0 and requires_grad are restored.
    """
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive step counts, got {steps!r}")
    weight = model.get_submodule(module_name).weight
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    w0 = weight.detach().clone()
    for p in model.parameters():
        p.requires_grad_(p is weight)
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=0.0)
    losses, deltas, was_training = [], {}, model.training
    model.train()
    try:
        for step in progress(range(max(steps)), "train"):
            loss = model(**batches[step % len(batches)]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step + 1 in steps:
                deltas[step + 1] = weight.detach() - w0
    finally:
        with torch.no_grad():
            weight.copy_(w0)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return deltas, losses


def full_finetune_delta(
    model: nn.Module, module_name: str, batches: list[dict], steps: int, lr: float = 1e-4
) -> tuple[torch.Tensor, list[float]]:
    """Train only `module_name`'s weight fully for `steps` steps; returns (W - W0 (d, k), losses); W0 is restored."""
    deltas, losses = full_finetune_deltas(model, module_name, batches, [steps], lr)
    return deltas[steps], losses
