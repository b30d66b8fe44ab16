import math

import pytest
import torch

from sft_lessons import zero_memory
from sft_lessons.memory import GiB


def test_zero_model_states_reproduce_the_papers_example():
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters, K = 12, 64 GPUs -> 120, 31.4, 16.6, 1.9 GB per GPU
    got = [zero_memory.zero_model_states(7.5e9, s, 64)["total"] / 1e9 for s in (0, 1, 2, 3)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]
    one = zero_memory.zero_model_states(100, 0)
    assert (one["parameters"], one["gradients"], one["optimizer_states"]) == (200, 200, 1200)  # 2 + 2 + 12 B


def test_zero_model_states_partition_one_more_part_per_stage():
    by = {s: zero_memory.zero_model_states(1e9, s, 4) for s in (0, 1, 2, 3)}
    assert by[1]["optimizer_states"] == by[0]["optimizer_states"] / 4 and by[1]["gradients"] == by[0]["gradients"]
    assert by[2]["gradients"] == by[0]["gradients"] / 4 and by[2]["parameters"] == by[0]["parameters"]
    assert by[3]["total"] == by[0]["total"] / 4
    assert all(zero_memory.zero_model_states(1e9, s, 1)["total"] == by[0]["total"] for s in (1, 2, 3))  # N = 1
    with pytest.raises(ValueError, match="valid: 0, 1, 2, 3"):
        zero_memory.zero_model_states(1e9, 4)
    with pytest.raises(ValueError, match="num_gpus"):
        zero_memory.zero_model_states(1e9, 1, 0)


def test_zero_memory_table_puts_the_formula_beside_deepspeeds_estimators():
    total, largest = zero_memory.count_params_from_config(zero_memory.MODEL_CONFIGS["llama-7b"])
    assert total == 6_738_415_616 and largest == 32000 * 4096
    assert zero_memory.count_params_from_config(zero_memory.MODEL_CONFIGS["opt-350m"])[0] == 331_196_416
    rows = zero_memory.zero_memory_table({"llama-7b": zero_memory.MODEL_CONFIGS["llama-7b"]}, gpus=(1, 8))
    assert [(r["zero_stage"], r["offload"]) for r in rows] == [(0, False), (1, False), (2, False), (2, True),
                                                               (3, False), (3, True)]  # fmt: skip
    by = {(r["zero_stage"], r["offload"]): r for r in rows}
    assert by[0, False]["paper (1 GPU)"] == pytest.approx(16 * total / GiB)  # 2 + 2 + 12 bytes per parameter
    assert by[2, False]["DeepSpeed (1 GPU)"] == pytest.approx(20 * total / GiB)  # + an fp32 gradient copy
    assert by[2, False]["DeepSpeed (8 GPU)"] == pytest.approx((2 * total + int(18 * total / 8)) / GiB)
    assert by[2, True]["DeepSpeed (1 GPU)"] == pytest.approx(2 * total / GiB)  # only 16-bit weights stay
    assert by[3, True]["DeepSpeed (8 GPU)"] == pytest.approx(4 * largest / GiB)
    assert math.isnan(by[0, False]["DeepSpeed (1 GPU)"]) and math.isnan(by[2, True]["paper (8 GPU)"])
    assert math.isnan(by[2, False]["DeepSpeed host (1 GPU)"]) and by[2, True]["DeepSpeed host (1 GPU)"] > 0
    for n in ("1 GPU", "8 GPU"):  # more partitioning never needs more GPU memory
        stages = [by[s, False][f"paper ({n})"] for s in (0, 1, 2, 3)]
        assert stages == sorted(stages, reverse=True)


def test_held_bytes_counts_shared_memory_once():
    flat = torch.zeros(100)
    a, b = flat[:60], flat[40:]  # overlapping views of one buffer
    assert zero_memory.held_bytes([a, b]) == 400
    assert zero_memory.held_bytes([flat, a, None, torch.zeros(0)]) == 400
    assert zero_memory.held_bytes([torch.zeros(10, dtype=torch.bfloat16), torch.zeros(5)]) == 20 + 20


def test_rank_memory_table_lists_each_rank():
    row = dict(parameters=1024, gradients=512, adam_moments=2048, master_weights=0)
    table = zero_memory.rank_memory_table([row, row])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].split()[:6] == ["rank", *zero_memory.MEASURED, "sum"]
    assert lines[1].split() == ["0", "1.0", "0.5", "2.0", "0.0", "3.5"]
