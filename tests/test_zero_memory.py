import pytest

from sft_lessons import zero_memory


def test_zero_memory_table_uses_deepspeed_estimators():
    total, largest = zero_memory.count_params_from_config(zero_memory.MODEL_CONFIGS["llama-7b"])
    assert total == 6_738_415_616 and largest == 32000 * 4096
    assert zero_memory.count_params_from_config(zero_memory.MODEL_CONFIGS["opt-350m"])[0] == 331_196_416
    rows = zero_memory.zero_memory_table({"llama-7b": zero_memory.MODEL_CONFIGS["llama-7b"]}, gpus=(1, 8))
    assert [(r["zero_stage"], r["offload"]) for r in rows] == [(0, False)] + [
        (s, o) for s in (1, 2, 3) for o in (False, True)
    ]
    by = {(r["zero_stage"], r["offload"]): r for r in rows}
    gib = 2**30
    assert by[0, False]["GiB/GPU (1 GPU)"] == pytest.approx(
        20 * total / gib
    )  # 2 + 2 + 16 bytes per parameter
    assert by[2, False]["GiB/GPU (8 GPU)"] == pytest.approx((2 * total + int(18 * total / 8)) / gib)
    assert by[2, True]["GiB/GPU (1 GPU)"] == pytest.approx(
        2 * total / gib
    )  # only fp16 weights stay on the GPU
    assert by[3, True]["GiB/GPU (8 GPU)"] == pytest.approx(4 * largest / gib)
    for n in ("1 GPU", "8 GPU"):  # more partitioning never needs more GPU memory
        stages = [by[s, False][f"GiB/GPU ({n})"] for s in (0, 1, 2, 3)]
        assert stages == sorted(stages, reverse=True)
