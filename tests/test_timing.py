import time

import pytest
import torch

from sft_lessons import timing


def test_timed_call_returns_seconds_and_result():
    seconds, result = timing.timed_call(lambda: time.sleep(0.02) or 7)
    assert result == 7 and 0.015 < seconds < 0.5
    cpu, _ = timing.timed_call(lambda: time.sleep(0.02), clock="cpu")
    assert cpu < 0.015  # sleeping costs no CPU time
    with pytest.raises(ValueError, match="valid: wall, cpu"):
        timing.timed_call(lambda: None, clock="gpu")


def test_interleaved_times_alternates_the_order_after_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.interleaved_times(fns, repeats=2, warmup=1)
    assert calls == ["a", "b", "c", "a", "b", "c", "c", "b", "a"]  # warm-up, then A B C, C B A
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}
    with pytest.raises(ValueError, match="repeats >= 1"):
        timing.interleaved_times(fns, repeats=0)


def test_time_interleaved_ranks_a_slow_call_above_a_fast_one():
    medians = timing.time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, repeats=3)
    assert medians["slow"] > 0.008 > medians["fast"]


def test_spread():
    assert timing.spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_peak_memory_sees_a_large_allocation():
    with timing.PeakMemory("cpu") as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB of float32
        block += 1
        time.sleep(0.05)
    del block
    assert mem.peak_bytes >= 48 * 2**20


def test_gemm_rate_is_positive_and_named():
    rate = timing.gemm_flops_per_s("cpu", n=128, repeats=2)
    assert rate["n"] == 128 and rate["dtype"] == "float32" and rate["flops_per_s"] > 1e6
