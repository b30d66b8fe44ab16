import json
import math

import pytest

from sft_lessons.course import trl_compare as tc


def test_preset_and_bad_variants():
    quick = tc.TrlBenchConfig.preset(quick=True, variants=["ours_longest", "trl_default"])
    assert (quick.records, quick.batch_size, quick.rounds, quick.variants) == (16, 4, 1, ["ours_longest", "trl_default"])
    assert tc.TrlBenchConfig.preset().variants == list(tc.VARIANTS)
    with pytest.raises(ValueError, match=r"unknown variants \['nope'\]; valid: ours_longest, ours_grouped"):
        tc.TrlBenchConfig.preset(variants=["nope"])


def test_summarize_leaves_out_the_first_step():
    run = {"steps": [dict(loss=3.0, seconds=10.0, tokens=100), dict(loss=2.0, seconds=1.0, tokens=200),
                     dict(loss=1.0, seconds=3.0, tokens=600)],
           "held_out_loss": 1.5, "held_out_loss_before": 2.5, "peak_mem_mb": 9.0, "trainable_params": 4,
           "batch_size": 2}  # fmt: skip
    row = tc.summarize(run)
    assert (row["steps"], row["sec_per_step"], row["tokens_per_s"], row["tokens"]) == (3, 2.0, 200.0, 900)
    assert row["train_loss"] == pytest.approx(2.0)


def test_verdict_pairs_rounds_and_picks_the_fastest():
    def row(tps, losses):
        return {"tokens_per_s": tps, "rounds": [{"held_out_loss": v, "tokens_per_s": tps} for v in losses]}

    rows = {"ours_longest": row(100, [2.0, 2.2]), "ours_grouped": row(150, [2.1, 2.3]),
            "trl_default": row(120, [2.0, 2.0]), "trl_packing": row(130, [2.2, 2.4])}  # fmt: skip
    v = tc.verdict(rows)
    assert (v["best_ours"], v["best_trl"]) == ("ours_grouped", "trl_packing")
    assert v["ours_over_trl_tokens_per_s"] == pytest.approx(150 / 130)
    assert v["held_out_loss_diffs"] == pytest.approx([-0.1, -0.1])
    assert v["pairs"]["longest"]["ours_over_trl_tokens_per_s"] == pytest.approx(100 / 120)
    assert v["pairs"]["longest"]["per_round"] == pytest.approx([100 / 120] * 2)
    assert set(v["pairs"]) == {"longest"}  # the other pairs lack their TRL side
    assert tc.verdict({"ours_longest": rows["ours_longest"]}) == {}


def test_packs_per_epoch_is_best_fit_decreasing():
    pytest.importorskip("trl", minversion="1.16")
    # 6 + 4 and 5 + 5 fill two rows of 10; 7 + 3 would too, 9 needs its own
    assert tc.packs_per_epoch([[1] * 6, [1] * 4, [1] * 5, [1] * 5, [1] * 9], 10) == 3


@pytest.mark.slow
def test_quick_comparison_trains_the_same_work(tmp_path):
    pytest.importorskip("trl", minversion="1.16")
    from sft_lessons.course import cli

    assert cli.main(["bench", "--quick", "--sections", "trl", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())["trl"]
    rows = result["variants"]
    assert list(rows) == list(tc.VARIANTS)
    # the same records, LoRA size and starting point for every variant
    assert len({r["tokens"] for r in rows.values()}) == 1
    assert len({r["trainable_params"] for r in rows.values()}) == 1 and rows["trl_default"]["trainable_params"] > 0
    assert len({r["held_out_loss_before"] for r in rows.values()}) == 1
    # the same number of steps (packing: as many rows per step as keep it nearest)
    steps = rows["ours_longest"]["steps"]
    assert all(abs(r["steps"] - steps) <= 1 for r in rows.values())
    assert [r["rows_per_step"] for r in rows.values()][:-1] == [4] * 6 and rows["trl_packing"]["packs"] > 0
    for r in rows.values():
        assert r["sec_per_step"] > 0 and r["tokens_per_s"] > 0 and math.isfinite(r["held_out_loss"])
        assert r["held_out_loss"] < r["held_out_loss_before"]  # it learnt something
    # padding-free flattens the same batches into one row with restarting positions: the same training
    assert rows["trl_padding_free"]["held_out_loss"] == pytest.approx(rows["trl_default"]["held_out_loss"], abs=1e-5)
    assert rows["ours_padding_free"]["held_out_loss"] == pytest.approx(rows["ours_longest"]["held_out_loss"], abs=1e-5)
    assert result["best_ours"] in tc.OURS and result["best_trl"] not in tc.OURS
    assert set(result["pairs"]) == set(tc.PAIRS)
    table = tc.markdown_table(result)
    assert table.count("\n") == len(tc.VARIANTS) + 1 and "| trl_grouped | 4 | 4 |" in table
