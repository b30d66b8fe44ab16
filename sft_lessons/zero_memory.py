"""Memory for model states under ZeRO 0-3: the ZeRO paper's formula and DeepSpeed's estimators (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb).

The formula (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models": 16Ψ in
§3.1, the stages in §5 and Figure 1) counts 2 + 2 + K bytes per parameter (16-bit parameters, 16-bit gradients, K = 12
bytes of fp32 Adam state: master weights, momentum, variance), built on chapter 4's `memory.estimate_training_memory`.
DeepSpeed's estimators also count the fp32 gradient its ZeRO-1/2 implementation builds for each partition (4 more
bytes) and, with offload, host buffers.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .device import tell_deepspeed
from .memory import GiB, count_parameters, estimate_training_memory

MODEL_CONFIGS = {  # config.json of facebook/opt-350m, facebook/opt-1.3b, huggyllama/llama-7b on the Hugging Face hub
    "opt-350m": dict(model_type="opt", hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=512,
                     do_layer_norm_before=False),
    "opt-1.3b": dict(model_type="opt", hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                     vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048),
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, vocab_size=32000, max_position_embeddings=2048,
                     tie_word_embeddings=False),
}  # fmt: skip


def count_params_from_config(config: dict) -> tuple[int, int]:
    """(total, largest single module) parameter counts of a model built on the meta device: no weights, no download."""
    config = dict(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    total = count_parameters(model, trainable_only=False)  # tied weights are counted once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


ZERO_STAGES = (0, 1, 2, 3)


def zero_model_states(n_params: float, stage: int, num_gpus: int = 1) -> dict[str, float]:
    """Bytes per GPU of the paper's model states under ZeRO `stage` on `num_gpus` data-parallel GPUs (mixed-precision Adam).

    {'parameters': 2Ψ, 'gradients': 2Ψ, 'optimizer_states': KΨ with K = 12, 'total'}; stage 1 divides the optimizer
    states by N, stage 2 the gradients too, stage 3 the parameters too: (2+2+K)Ψ, 2Ψ+2Ψ+KΨ/N, 2Ψ+(2+K)Ψ/N, (2+2+K)Ψ/N.
    """
    if stage not in ZERO_STAGES:
        raise ValueError(f"stage {stage!r}; valid: {', '.join(map(str, ZERO_STAGES))}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus!r}")
    est = estimate_training_memory(n_params, n_params, weight_bits=16, master_weights=True)  # 2 + 2 + (8 + 4) B

    def share(nbytes: float, partitioned: bool) -> float:
        return nbytes / num_gpus if partitioned else nbytes

    out = {
        "parameters": share(est["weights"], stage >= 3),
        "gradients": share(est["gradients"], stage >= 2),
        "optimizer_states": share(est["optimizer_states"] + est["master_weights"], stage >= 1),
    }
    out["total"] = sum(out.values())
    return out


def deepspeed_estimate(total: int, largest: int, stage: int, offload: bool, num_gpus: int = 1) -> tuple[int, int] | None:
    """(GPU bytes per GPU, host bytes) from DeepSpeed's estimator for ZeRO 2 or 3 (one node); None for stages 0 and 1,
    which have none. Offload: optimizer state (stage 3: parameters too) in host memory."""
    tell_deepspeed()  # before importing deepspeed, so it does not guess the accelerator and warn
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus, 1, offload, offload, True)
    elif stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, num_gpus, 1, offload)
    else:
        return None
    return int(gpu), int(cpu)


def zero_memory_table(configs: dict[str, dict], gpus=(1, 8)) -> list[dict]:
    """Rows {model, params, zero_stage, offload, paper GiB/GPU and DeepSpeed GiB/GPU for each count in gpus,
    DeepSpeed host GiB (offload rows)}; NaN where a source has no number (the paper: offload; DeepSpeed: stages 0-1)."""
    nan = float("nan")
    rows = []
    for name, config in configs.items():
        total, largest = count_params_from_config(config)
        for stage in ZERO_STAGES:
            for offload in (False, True) if stage >= 2 else (False,):
                row = dict(model=name, params=f"{total / 1e6:,.0f}M", zero_stage=stage, offload=offload)
                for n in gpus:
                    row[f"paper ({n} GPU)"] = nan if offload else zero_model_states(total, stage, n)["total"] / GiB
                for n in gpus:
                    est = deepspeed_estimate(total, largest, stage, offload, n)
                    row[f"DeepSpeed ({n} GPU)"] = nan if est is None else est[0] / GiB
                est = deepspeed_estimate(total, largest, stage, offload, 1)
                row["DeepSpeed host (1 GPU)"] = est[1] / GiB if offload else nan
                rows.append(row)
    return rows


# ---- measured: the model-state tensors one rank of a running DeepSpeed engine holds ----
# (not counted: ZeRO-1/2's gradient-reduction buckets, the fp32 gradient partition built inside step(), activations)


def held_bytes(tensors) -> int:
    """Bytes of memory the tensors occupy together: overlapping views of one buffer are counted once."""
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                   for t in tensors if t is not None and t.numel() > 0)  # fmt: skip
    total, end = 0, 0
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _inner_optimizer(engine):
    """The torch optimizer doing the update (ZeRO wraps it: engine.optimizer.optimizer)."""
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def gradient_tensors(engine) -> list:
    """The gradient buffers this rank holds now: whole .grad tensors, or ZeRO's partitions of them."""
    opt, inner = engine.optimizer, _inner_optimizer(engine)
    found = [p.grad for p in engine.module.parameters()]
    for value in (getattr(opt, "averaged_gradients", None) or {}).values():
        found += value if isinstance(value, (list, tuple)) else [value]
    found.append(getattr(opt, "grad_partitions_flat_buffer", None))  # ZeRO-3
    found += [p.grad for g in inner.param_groups for p in g["params"]]
    return [t for t in found if torch.is_tensor(t)]


def model_state_bytes(engine) -> dict[str, int]:
    """Bytes this rank holds now: parameters (ZeRO-3: its partition, plus the small parameters DeepSpeed keeps whole
    on every rank), Adam's two moments, and fp32 master weights where they are a copy apart from the parameters."""
    module_params = list(engine.module.parameters())
    params = []
    for p in module_params:
        if hasattr(p, "ds_tensor"):  # ZeRO-3
            params += [p.ds_tensor, p.data if getattr(p, "ds_persist", False) else None]
        else:
            params.append(p.data)
    opt, inner = engine.optimizer, _inner_optimizer(engine)
    own = {p.data_ptr() for p in module_params}
    moments = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    masters = [*getattr(opt, "single_partition_of_fp32_groups", []), *getattr(opt, "fp32_partitioned_groups_flat", []),
               *(p for g in inner.param_groups for p in g["params"])]  # fmt: skip
    masters = [t for t in masters if torch.is_tensor(t) and t.data_ptr() not in own]
    return {"parameters": held_bytes(params), "adam_moments": held_bytes(moments),
            "master_weights": held_bytes(masters)}  # fmt: skip


MEASURED = ("parameters", "gradients", "adam_moments", "master_weights")


def rank_memory_table(per_rank: list[dict]) -> str:
    """Text table of measured bytes per rank (rows: ranks; columns: MEASURED and their sum), in KiB."""
    head = f"{'rank':>4}" + "".join(f"{k:>16}" for k in (*MEASURED, "sum")) + "   (KiB)"
    rows = [head]
    for rank, row in enumerate(per_rank):
        values = [row[k] for k in MEASURED]
        rows.append(f"{rank:>4}" + "".join(f"{v / 1024:>16,.1f}" for v in (*values, sum(values))))
    return "\n".join(rows)
