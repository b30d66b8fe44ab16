import json
import math

import pytest

from sft_lessons.course import bench, cli


@pytest.mark.slow
def test_quick_bench_writes_schema_and_finite_ratios(tmp_path, capsys):
    sections = ["train", "gemm", "inference", "icl", "sft_data", "load"]  # trl: tests/test_trl_compare.py
    assert cli.main(["bench", "--quick", "--sections", *sections, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    bench.check_result(result)
    assert set(result["train"]) == {"full", "peft_lora", "our_lora", "qlora"}
    for row in result["train"].values():
        assert row["sec_per_step"] > 0 and row["trainable_params"] > 0
    assert result["train"]["peft_lora"]["trainable_params"] == result["train"]["our_lora"]["trainable_params"]
    assert (
        result["train"]["full"]["optimizer_state_mb"]
        > 10 * result["train"]["peft_lora"]["optimizer_state_mb"]
    )
    assert {"lora_over_full_step", "ours_over_peft_step", "merged_over_base_tokens_per_s"} <= set(
        result["ratios"]
    )
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ratio | value |" in capsys.readouterr().out


def test_check_result_rejects_bad_ratios():
    good = {
        "date": "d",
        "machine": "m",
        "device": "cpu",
        "config": {},
        "model": "x",
        "n_params": 1,
        "ratios": {"a": 1.0},
    }
    bench.check_result(good)
    with pytest.raises(ValueError, match="finite and positive"):
        bench.check_result({**good, "ratios": {"a": float("nan")}})
    with pytest.raises(ValueError, match="lacks 'ratios'"):
        bench.check_result({k: v for k, v in good.items() if k != "ratios"})


def test_preset_quick_and_bad_sections():
    cfg = bench.BenchConfig.preset(quick=True, steps=4, sections=["gemm"])
    assert (cfg.quick, cfg.seq_len, cfg.gen_tokens, cfg.steps, cfg.sections) == (True, 64, 16, 4, ["gemm"])
    assert bench.BenchConfig.preset().seq_len == 128
    with pytest.raises(ValueError, match="unknown bench sections \\['nope'\\]; valid: train, gemm"):
        bench.BenchConfig.preset(sections=["nope"])
