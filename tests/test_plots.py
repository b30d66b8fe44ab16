import pandas as pd
import pytest
import torch

from sft_lessons import lora
from sft_lessons.course import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_lora_count_and_singular_value_plots():
    llama = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    llama["num_attention_heads"] = 4
    fig = plots.lora_count_plot({"tiny": lora.lora_count_table(llama, [1, 2, 4])}, [1, 2, 4])
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "rank r"
    s = torch.linalg.svdvals(torch.randn(8, 6))
    assert len(plots.singular_value_plot({"random": s}, r=2).axes) == 2


def test_chapter_04_plots_write_pngs(tmp_path):
    run = {"train_loss": [(5, 0.7), (10, 0.5)], "eval_accuracy": [0.6, 0.8]}
    assert plots.training_curves({"full": run, "lora": run}, tmp_path).read_bytes()[:8] == PNG
    table = pd.DataFrame([[4, 2], [1, 3]], index=[0, 1], columns=["query", "value"])
    path = plots.adalora_ranks(table, [(0, 48, 48), (10, 24, 30), (20, 12, 12)], tmp_path)
    assert path.name == "adalora_ranks.png" and path.read_bytes()[:8] == PNG
    rows = {"full": {"weights": 2e9, "gradients": 2e9, "optimizer_states": 8e9}, "qlora": {"weights": 0.5e9}}
    assert plots.memory_breakdown(rows, tmp_path, name="m.png").read_bytes()[:8] == PNG


def test_chapter_05_plots():
    fig = plots.plot_loss_vs_length({"copy": {"none": {64: 0.1, 128: 5.0}}, "passkey": {"none": {64: 0.1}}})
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "evaluation length (tokens)"
    fig = plots.plot_finetune_curves({"from PI": [(0, 5.0), (10, 3.0)]})
    assert fig.axes[0].get_xlabel() == "fine-tuning step"
    assert plots.as_png(fig).data[:8] == PNG


def test_chapter_06_plots(tmp_path):
    from sft_lessons.data import data_path, load_jsonl

    funnel = [("raw", 177), ("dedup", 150), ("length", 120)]
    assert plots.curation_funnel(funnel, tmp_path).stat().st_size > 5000
    rows = load_jsonl(data_path("instruction_datasets.jsonl"))
    assert plots.dataset_catalogue(rows, tmp_path).stat().st_size > 5000


def test_chapter_07_plots(tmp_path):
    tokens = ["<|im_start|>", "user", "hi", "<|im_end|>", "ok", "<|endoftext|>", "<pad>"]
    labels = [-100, -100, -100, -100, 11, 0, -100]
    path = plots.sft_label_mask(tokens, labels, [1, 1, 1, 1, 1, 1, 0], tmp_path)
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError):  # tokens, labels and mask must line up
        plots.sft_label_mask(tokens, labels[:-1], [1] * 7, tmp_path)
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert plots.sft_loss_curve(history, [(0, 30.9), (1, 10.0)], tmp_path).read_bytes()[:8] == PNG
