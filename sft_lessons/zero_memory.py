"""Memory for model states under ZeRO 0-3, from DeepSpeed's own estimators (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from .device import tell_deepspeed
from .memory import count_parameters

MODEL_CONFIGS = {  # values from each model's config.json on the Hugging Face hub
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


def zero_model_state_bytes(total, largest, stage, offload, num_gpus=1) -> tuple[int, int]:
    """(GPU bytes per GPU, CPU bytes) for params, gradients and Adam states under ZeRO `stage` (mixed precision)."""
    tell_deepspeed()  # before importing deepspeed, so it does not guess the accelerator and warn
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if stage == 3:
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus, 1, offload, offload, True
        )
    elif stage == 2 or offload:  # stage-1 offload runs the same code as stage 2
        cpu, gpu = estimate_zero2_model_states_mem_needs(total, num_gpus, 1, offload)
    else:  # DeepSpeed has no stage 0/1 estimator: the stage-2 accounting (2 + 2 + 16 bytes) without partitioning
        partitioned = 16 * total // num_gpus if stage == 1 else 16 * total
        cpu, gpu = 0, 4 * total + partitioned
    return int(gpu), int(cpu)


def zero_memory_table(configs: dict[str, dict], gpus=(1, 8)) -> list[dict]:
    """Rows {model, params, zero_stage, offload, GiB per GPU (for each count in gpus), CPU GiB}."""
    rows = []
    for name, config in configs.items():
        total, largest = count_params_from_config(config)
        for stage in (0, 1, 2, 3):
            for offload in (False, True) if stage else (False,):
                row = dict(model=name, params=f"{total / 1e6:,.0f}M", zero_stage=stage, offload=offload)
                for n in gpus:
                    row[f"GiB/GPU ({n} GPU)"] = (
                        zero_model_state_bytes(total, largest, stage, offload, n)[0] / 2**30
                    )
                row["CPU GiB (1 GPU)"] = zero_model_state_bytes(total, largest, stage, offload, 1)[1] / 2**30
                rows.append(row)
    return rows
