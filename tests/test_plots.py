import math

import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
import torch

from sft_lessons import lora
from sft_lessons.course import plots
from sft_lessons.paths import build_dir, images_dir

PNG = b"\x89PNG\r\n\x1a\n"


def lines_data(ax):
    """[(label, xdata, ydata)] of the axes' lines, as plain lists."""
    return [
        (line.get_label(), list(map(float, line.get_xdata())), list(map(float, line.get_ydata())))
        for line in ax.lines
    ]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def tick_texts(labels):
    return [t.get_text() for t in labels]


def rgb(color):
    return matplotlib.colors.to_rgb(color)


def test_lora_count_plot_draws_each_model_and_its_full_line():
    llama = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    llama["num_attention_heads"] = 4
    table = lora.lora_count_table(llama, [1, 2, 4])
    fig = plots.lora_count_plot({"tiny": table}, [1, 2, 4])
    (ax,) = fig.axes
    assert ax.get_xlabel() == "rank r" and ax.get_ylabel() == "trainable parameters"
    assert ax.get_xscale() == ax.get_yscale() == "log"
    (lora_line, full_line) = lines_data(ax)
    assert lora_line == ("tiny: LoRA", [1.0, 2.0, 4.0], [float(row["per_model"]) for row in table])
    full_label = "tiny: full FT of these projections"  # the targeted projections, not the whole model
    assert full_line[0] == full_label and set(full_line[2]) == {float(table[0]["full_per_model"])}
    assert legend_texts(ax) == ["tiny: LoRA", full_label]


def test_singular_value_plot_normalises_and_accumulates():
    s = torch.linalg.svdvals(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))
    fig = plots.singular_value_plot({"random": s}, r=2)
    left, right = fig.axes
    ((label, x, y),) = lines_data(left)
    assert label == "random" and x == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(y, (s / s[0]).double().numpy())
    energy = lines_data(right)[0][2]
    np.testing.assert_allclose(energy, (torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()).numpy())
    assert energy[-1] == pytest.approx(1.0)
    vline = lines_data(right)[1]
    assert set(vline[1]) == {2.0}  # k = r marked
    assert right.get_title() == "energy in the top-k (r = 2 dotted)"


def test_training_curves_figure_plots_each_run(tmp_path):
    full = {"train_loss": [(5, 0.7), (10, 0.5)], "eval_accuracy": [0.6, 0.8]}
    lora_run = {"train_loss": [(5, 0.9), (10, 0.8), (15, 0.6)], "eval_accuracy": [0.5, 0.7, 0.9]}
    fig = plots.training_curves_figure({"full": full, "lora": lora_run})
    ax_loss, ax_acc = fig.axes
    assert (ax_loss.get_xlabel(), ax_loss.get_ylabel()) == ("optimizer step", "training loss")
    assert (ax_acc.get_xlabel(), ax_acc.get_ylabel()) == ("epoch", "accuracy")
    assert lines_data(ax_loss) == [("full", [5, 10], [0.7, 0.5]), ("lora", [5, 10, 15], [0.9, 0.8, 0.6])]
    assert lines_data(ax_acc) == [("full", [1, 2], [0.6, 0.8]), ("lora", [1, 2, 3], [0.5, 0.7, 0.9])]
    assert list(ax_acc.get_xticks()) == [1, 2, 3]  # the longest run's epochs
    assert legend_texts(ax_loss) == legend_texts(ax_acc) == ["full", "lora"]
    path = plots.training_curves({"full": full}, tmp_path, name="c.png")
    assert path == tmp_path / "c.png" and path.read_bytes()[:8] == PNG


def test_lr_sweep_figure_marks_the_chosen_rates(tmp_path):
    from sft_lessons.stats import wilson

    sweep = {"full": [(1e-5, wilson(55, 100)), (1e-4, wilson(84, 100))],
             "lora": [(1e-4, wilson(53, 100)), (1e-3, wilson(79, 100))]}
    fig = plots.lr_sweep_figure(sweep, {"full": 1e-4, "lora": 1e-3})
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "dev accuracy (n=100, 95% CI)"
    stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert [list(line.get_ydata()) for line in stars] == [[0.84], [0.79]]  # one star per method, at its choice
    assert legend_texts(ax) == ["always one class", "full", "lora"]
    path = plots.lr_sweep(sweep, {"full": 1e-4, "lora": 1e-3}, tmp_path)
    assert path == tmp_path / "lr_sweep.png" and path.read_bytes()[:8] == PNG


def test_adalora_ranks_figure_shows_the_table_and_the_schedule(tmp_path):
    table = pd.DataFrame([[4, 2], [1, 3]], index=[0, 1], columns=["query", "value"])
    history = [(0, 48, 48), (10, 24, 30), (20, 12, 12)]
    fig = plots.adalora_ranks_figure(table, history)
    ax_map, ax_budget = fig.axes[:2]
    (image,) = ax_map.images
    np.testing.assert_array_equal(image.get_array(), table.values)
    assert tick_texts(ax_map.get_xticklabels()) == ["query", "value"]
    assert tick_texts(ax_map.get_yticklabels()) == ["layer 0", "layer 1"]
    assert sorted(t.get_text() for t in ax_map.texts) == ["1", "2", "3", "4"]  # every cell is written
    assert lines_data(ax_budget) == [
        ("scheduled budget", [0, 10, 20], [48, 24, 12]),
        ("non-zero singular values", [0, 10, 20], [48, 30, 12]),
    ]
    assert fig.axes[2].get_ylabel() == "rank"  # the colour bar
    path = plots.adalora_ranks(table, history, tmp_path)
    assert path == tmp_path / "adalora_ranks.png" and path.read_bytes()[:8] == PNG


def test_memory_breakdown_stacks_the_parts(tmp_path):
    rows = {"full": {"weights": 2e9, "gradients": 2e9, "optimizer_states": 8e9}, "qlora": {"weights": 0.5e9}}
    fig = plots.memory_breakdown_figure(rows)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "GB"
    assert legend_texts(ax) == [
        "weights",
        "gradients",
        "optimizer states",
    ]  # parts that are all zero are left out
    widths = [[bar.get_width() for bar in bars] for bars in ax.containers]
    lefts = [[bar.get_x() for bar in bars] for bars in ax.containers]
    assert widths == [[2.0, 0.5], [2.0, 0.0], [8.0, 0.0]]
    assert lefts == [[0.0, 0.0], [2.0, 0.5], [4.0, 0.5]]  # stacked: each part starts where the last ended
    assert tick_texts(ax.get_yticklabels()) == ["full", "qlora"]
    fig = plots.memory_breakdown_figure(rows, unit=1e6)
    assert fig.axes[0].get_xlabel() == "x 1e+06 bytes" and fig.axes[0].containers[0][0].get_width() == 2000
    path = plots.memory_breakdown(rows, tmp_path, name="m.png")
    assert path == tmp_path / "m.png" and path.read_bytes()[:8] == PNG


def test_first_layer_logits_figure_one_panel_per_length(tmp_path):
    curves = {256: {"none": [3.0, 2.0, 1.0, 4.0], "linear": [3.0, 3.0, 3.0, 3.0]}, 128: {"none": [1.0, 2.0]}}
    fig = plots.first_layer_logits_figure(curves, reference=3.5, train_len=2)
    assert [ax.get_title() for ax in fig.axes] == ["128 tokens", "256 tokens"]  # sorted by length
    assert lines_data(fig.axes[1])[:2] == [("none", [0, 1, 2, 3], [3.0, 2.0, 1.0, 4.0]), ("linear", [0, 1, 2, 3], [3.0] * 4)]
    dashed = [line for line in fig.axes[1].lines if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in dashed] == [[3.5, 3.5]]  # the training maximum
    assert fig.axes[0].get_ylabel() == "layer 0: max |q.k| / sqrt(d)"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "distances seen in training (< 2)", "none", "linear", "max at the training length 2"]
    long = plots.first_layer_logits_figure({512: {"none": list(range(512))}}, reference=1.0, train_len=64)
    (x, y) = lines_data(long.axes[0])[0][1:]
    assert x[:2] == [0, 8] and y[:2] == [7, 15] and len(y) == 64  # max over bins of 8 distances
    assert long.axes[0].get_title() == "512 tokens (max per 8 distances)"
    path = plots.first_layer_logits(curves, 3.5, 2, tmp_path)
    assert path == tmp_path / "first_layer_logits.png" and path.read_bytes()[:8] == PNG


def test_copy_source_figure_marks_the_trained_and_the_right_offset(tmp_path):
    profiles = {8: {"none": [1.0, 0.1, 0.2, 0.3, 0.4]}}
    fig = plots.copy_source_figure(profiles, train_len=4)
    (ax,) = fig.axes
    assert lines_data(ax)[0] == ("none", [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])  # k = 0 (the target itself) is left out
    vertical = [line.get_xdata()[0] for line in ax.lines[1:]]
    assert vertical == [2, 4]  # k = train_len / 2 and k = L / 2
    assert ax.get_title() == "copy at 8 tokens"
    path = plots.copy_source(profiles, 4, tmp_path)
    assert path == tmp_path / "copy_source.png" and path.read_bytes()[:8] == PNG


def test_finetune_curves_figure_draws_mean_and_band(tmp_path):
    curves = {"from PI": {0: [10.0, 8.0], 20: [3.0, 5.0]}, "from RoPE": {20: [4.0, 4.0], 0: [9.0, 11.0]}}
    fig = plots.finetune_curves_figure(curves, chance=4.16)
    (ax,) = fig.axes
    assert lines_data(ax)[:2] == [("from PI (mean of 2 seeds)", [0, 20], [9.0, 4.0]),
                                  ("from RoPE (mean of 2 seeds)", [0, 20], [10.0, 4.0])]  # steps sorted
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 3.0 and band.max() == 10.0  # min to max over seeds
    assert lines_data(ax)[2][2] == [4.16, 4.16]
    path = plots.finetune_curves(curves, 4.16, tmp_path, name="f.png")
    assert path == tmp_path / "f.png" and path.read_bytes()[:8] == PNG


def test_curation_funnel_bars_equal_the_counts(tmp_path):
    funnel = [("raw", 177), ("dedup", 150), ("length", 120)]
    fig = plots.curation_funnel_figure(funnel)
    (ax,) = fig.axes
    (bars,) = ax.containers
    assert [bar.get_width() for bar in bars] == [177, 150, 120]
    assert tick_texts(ax.get_yticklabels()) == ["raw", "after dedup", "after length"]
    assert [t.get_text() for t in ax.texts] == ["177", "150", "120"]
    assert ax.get_xlim() == pytest.approx((0, 177 * 1.12))
    assert ax.get_xlabel() == "records left"
    path = plots.curation_funnel(funnel, tmp_path)
    assert path == tmp_path / "curation_funnel.png" and path.read_bytes()[:8] == PNG


def test_dataset_catalogue_places_each_sized_dataset(tmp_path):
    rows = [
        {"name": "A", "size": 1000, "year": 2023, "method": "human"},
        {"name": "no size", "size": float("nan"), "year": 2022, "method": "model"},
        {"name": "unknown", "size": "varies", "year": 2022, "method": "model"},
        {"name": "D", "size": 50, "year": 2022, "method": "model"},
        {"name": "E", "size": 5000, "year": 2022, "method": "template"},
    ]
    fig = plots.dataset_catalogue_figure(rows)
    (ax,) = fig.axes
    points = [c for c in ax.collections if len(c.get_offsets())]  # the legend proxies hold no points
    assert [tuple(map(float, c.get_offsets()[0])) for c in points] == [(0, 50), (1, 5000), (2, 1000)]
    assert [rgb(c.get_facecolor()[0]) for c in points] == [rgb("#cc0000"), rgb("#1155cc"), rgb("#38761d")]
    assert [a.get_text() for a in ax.texts if isinstance(a, matplotlib.text.Annotation)] == ["D", "E", "A"]
    assert {t.get_text() for t in ax.texts} >= {"2022", "2023"}  # the year under each group
    assert legend_texts(ax) == ["human", "model", "template", "mixed"]
    assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((50 / 3, 5000 * 30))

    from sft_lessons.data import data_path, load_jsonl

    real = load_jsonl(data_path("instruction_datasets.jsonl"))
    sized = [
        r for r in real if isinstance(r["size"], (int, float)) and not math.isnan(r["size"]) and r["size"] > 0
    ]
    annotations = [
        a
        for a in plots.dataset_catalogue_figure(real).axes[0].texts
        if isinstance(a, matplotlib.text.Annotation)
    ]
    assert len(annotations) == len(sized) > 10
    path = plots.dataset_catalogue(rows, tmp_path)
    assert path == tmp_path / "instruction_datasets.png" and path.read_bytes()[:8] == PNG


def test_sft_label_mask_colours_each_token_by_role(tmp_path):
    tokens = ["<|im_start|>", "user", "hi\n", "<|im_end|>", "ok", "<|endoftext|>", "<pad>"]
    labels = [-100, -100, -100, -100, 11, 0, -100]
    mask = [1, 1, 1, 1, 1, 1, 0]
    fig = plots.sft_label_mask_figure(tokens, labels, mask)
    (ax,) = fig.axes
    prompt, target, padding = rgb("#dddddd"), rgb("#b6d7a8"), rgb("#ffffff")
    assert [rgb(p.get_facecolor()) for p in ax.patches] == [prompt] * 4 + [target] * 2 + [padding]
    assert [t.get_text() for t in ax.texts] == [
        "<|im_sta…",
        "user",
        "hi\\n",
        "<|im_end…",
        "ok",
        "<|endoft…",
        "<pad>",
    ]
    assert [p.get_xy() for p in ax.patches][:2] == [(0.03, 0.05), (1.03, 0.05)]  # left to right, 16 per row
    assert legend_texts(ax) == [
        "prompt, template: label IGNORE_INDEX", "answer + end marker: learnt", "padding: label IGNORE_INDEX",
    ]  # fmt: skip
    long = plots.sft_label_mask_figure(["t"] * 17, [1] * 17, [1] * 17).axes[0]
    assert long.patches[16].get_xy() == (0.03, 1.05)  # the 17th token starts the second row
    with pytest.raises(ValueError):  # tokens, labels and mask must line up
        plots.sft_label_mask_figure(tokens, labels[:-1], mask)
    path = plots.sft_label_mask(tokens, labels, mask, tmp_path)
    assert path == tmp_path / "sft_label_mask.png" and path.read_bytes()[:8] == PNG


def test_sft_loss_curve_plots_loss_and_perplexity(tmp_path):
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.2}]
    perplexity = [(0, 30.9), (1, 10.0), (2, 8.5)]
    fig = plots.sft_loss_curve_figure(history, perplexity)
    ax_loss, ax_ppl = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["SFT loss", "held-out perplexity"]
    assert [(x, y) for _, x, y in lines_data(ax_loss)] == [([1, 2, 3], [2.0, 1.5, 1.2])]
    assert [(x, y) for _, x, y in lines_data(ax_ppl)] == [([0, 1, 2], [30.9, 10.0, 8.5])]
    assert list(ax_ppl.get_xticks()) == [0, 1, 2]
    path = plots.sft_loss_curve(history, perplexity, tmp_path)
    assert path == tmp_path / "sft_loss_curve.png" and path.read_bytes()[:8] == PNG


def test_plots_without_out_dir_go_to_build_plots_never_images():
    name = "test_plots_default_dir.png"
    images_before = sorted(p.name for p in images_dir().iterdir())
    path = plots.memory_breakdown({"full": {"weights": 1e9}}, name=name)
    try:
        assert path == build_dir() / "plots" / name and path.read_bytes()[:8] == PNG
        assert not path.resolve().is_relative_to(images_dir().resolve())
        assert sorted(p.name for p in images_dir().iterdir()) == images_before  # nothing written into images/
        assert plots.plot_path("x.png") == build_dir() / "plots" / "x.png"
    finally:
        path.unlink(missing_ok=True)
