"""Plots of results measured in the notebooks (English labels); diagrams that need no data live in figures.py.

Functions that return a figure show it inline; those with `out_dir` save a PNG (default: build/plots/, never the
tracked images/ folder, so running a notebook leaves `git status` clean) and return its path; each saves the
figure that its `<name>_figure` function returns (no pyplot), which the tests inspect.
"""

from __future__ import annotations

from pathlib import Path

from ..data import IGNORE_INDEX
from ..paths import build_dir
from .figures import new_figure, save_figure


def plot_path(name: str, out_dir=None) -> Path:
    """Where a plot of measured results goes: out_dir, or build/plots/ (git-ignored)."""
    folder = Path(out_dir) if out_dir else build_dir() / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# ---- chapter 03: LoRA math ----
def lora_count_plot(tables: dict, ranks):
    """Log-log plot of LoRA trainable parameters vs rank, one line per model, full weights dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for (label, rows), color in zip(tables.items(), ["C0", "C1", "C2", "C3"], strict=False):
        ax.plot(ranks, [row["per_model"] for row in rows], "o-", color=color, label=f"{label}: LoRA")
        ax.axhline(rows[0]["full_per_model"], color=color, ls="--", lw=1, label=f"{label}: full")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable parameters")
    ax.set_xticks(list(ranks), [str(r) for r in ranks])
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("LoRA on all linear projections of the decoder layers", fontsize=10)
    fig.tight_layout()
    return fig


def singular_value_plot(spectra: dict, r: int = 8):
    """Left: normalised singular values; right: energy captured by the top-k, with k = r marked."""
    import matplotlib.pyplot as plt
    import torch

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.3))
    for label, s in spectra.items():
        s = s.double()
        left.semilogy(torch.arange(1, len(s) + 1), s / s[0], label=label)
        right.plot(torch.arange(1, len(s) + 1), torch.cumsum(s**2, 0) / (s**2).sum(), label=label)
    left.set(xlabel="index i", ylabel="sigma_i / sigma_1", title="singular values")
    right.axvline(r, color="gray", ls=":", lw=1)
    right.set(
        xscale="log", xlabel="top-k", ylabel="energy captured", title=f"energy in the top-k (r = {r} dotted)"
    )
    left.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- chapter 04: LoRA variants ----
def training_curves(results: dict, out_dir=None, name: str = "full_vs_lora_curves.png") -> Path:
    """Training loss per logged step and eval accuracy per epoch, one line per run -> build/plots/<name>."""
    return save_figure(training_curves_figure(results), plot_path(name, out_dir))


def training_curves_figure(results: dict):
    """The figure of `training_curves`: left, loss per step; right, accuracy per epoch (one line per run)."""
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(10, 3.4))
    for label, res in results.items():
        steps, losses = zip(*res["train_loss"], strict=True)
        ax_loss.plot(steps, losses, marker=".", label=label)
        epochs = range(1, len(res["eval_accuracy"]) + 1)
        ax_acc.plot(epochs, res["eval_accuracy"], marker="o", label=label)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="training loss (logged every 5 steps)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="eval accuracy (200 test reviews)")
    ax_acc.set_xticks(list(range(1, max(len(r["eval_accuracy"]) for r in results.values()) + 1)))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def adalora_ranks(table, history, out_dir=None) -> Path:
    """AdaLoRA's final rank per layer and module (heatmap); scheduled budget and live singular values per step."""
    return save_figure(adalora_ranks_figure(table, history), plot_path("adalora_ranks.png", out_dir))


def adalora_ranks_figure(table, history):
    """The figure of `adalora_ranks`: the rank heatmap and the budget schedule."""
    import numpy as np

    fig, (ax_map, ax_budget) = new_figure(1, 2, figsize=(10.5, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
    image = ax_map.imshow(table.values, cmap="viridis", aspect="auto", vmin=0)
    ax_map.set_xticks(range(table.shape[1]), table.columns, rotation=30, fontsize=8)
    ax_map.set_yticks(range(table.shape[0]), [f"layer {i}" for i in table.index], fontsize=8)
    for (i, j), value in np.ndenumerate(table.values):
        color = "w" if value < table.values.max() / 2 else "k"
        ax_map.text(j, i, str(int(value)), ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax_map, label="rank")
    ax_map.set_title("final rank per matrix")
    steps, budget, alive = zip(*history, strict=True)
    ax_budget.plot(steps, budget, label="scheduled budget")
    ax_budget.plot(steps, alive, lw=0.8, alpha=0.7, label="non-zero singular values")
    ax_budget.set(xlabel="optimizer step", ylabel="total rank (all matrices)", title="budget schedule")
    ax_budget.legend(fontsize=8)
    ax_budget.grid(alpha=0.3)
    return fig


def memory_breakdown(rows: dict, out_dir=None, name: str = "memory_65b.png", unit: float = 1e9) -> Path:
    """Stacked bars of an estimate_training_memory breakdown per setting (values in `unit`, GB by default)."""
    return save_figure(memory_breakdown_figure(rows, unit), plot_path(name, out_dir))


def memory_breakdown_figure(rows: dict, unit: float = 1e9):
    """The figure of `memory_breakdown`: one stacked horizontal bar per setting, one colour per part."""
    parts = ["weights", "quant_constants", "gradients", "optimizer_states", "master_weights", "activations"]
    fig, ax = new_figure(figsize=(7.5, 3.4))
    bottom = [0.0] * len(rows)
    for part in parts:
        values = [row.get(part, 0) / unit for row in rows.values()]
        if any(values):
            ax.barh(list(rows), values, left=bottom, label=part.replace("_", " "))
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("GB" if unit == 1e9 else f"x {unit:g} bytes")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return fig


# ---- chapter 05: context extension ----
def as_png(fig, dpi: int = 90):
    """An IPython Image of `fig`: shows a closed or pyplot-free figure inline, whatever backend is active."""
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return Image(data=buffer.getvalue())


def plot_loss_vs_length(panels, suptitle="", ylabel="loss (nats)"):
    """One panel per {title: {method: {length: value}}}; returns the closed figure (show it with as_png)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, table) in zip(axes[0], panels.items(), strict=True):
        for method, row in table.items():
            lengths = sorted(row)
            ax.plot(lengths, [row[n] for n in lengths], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_finetune_curves(curves, title="fine-tuning at 256 tokens"):
    """Eval loss vs step for {name: [(step, loss), ...]}; returns the closed figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("copy loss at 256 tokens (nats)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    plt.close(fig)
    return fig


# ---- chapter 06: instruction data ----
def curation_funnel(funnel: list[tuple[str, int]], out_dir=None) -> Path:
    """Records left after each curation stage, as horizontal bars -> build/plots/curation_funnel.png."""
    return save_figure(curation_funnel_figure(funnel), plot_path("curation_funnel.png", out_dir))


def curation_funnel_figure(funnel: list[tuple[str, int]]):
    """The figure of `curation_funnel`: one bar per stage, its count written after it."""
    names, counts = zip(*funnel, strict=True)
    fig, ax = new_figure(figsize=(7, 3.4))
    bars = ax.barh(range(len(counts)), counts, color="#6fa8dc")
    ax.set_yticks(range(len(names)), [f"after {n}" if i else n for i, n in enumerate(names)])
    ax.invert_yaxis()
    for bar, n in zip(bars, counts, strict=True):
        ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, str(n), va="center", fontsize=9)
    ax.set_xlabel("records left")
    ax.set_title("Curation funnel on raw_qa_pool.jsonl")
    ax.set_xlim(0, max(counts) * 1.12)
    return fig


def dataset_catalogue(rows: list[dict], out_dir=None) -> Path:
    """Open instruction datasets: size (log scale) by year, coloured by construction method -> build/plots/."""
    return save_figure(dataset_catalogue_figure(rows), plot_path("instruction_datasets.png", out_dir))


def dataset_catalogue_figure(rows: list[dict]):
    """The figure of `dataset_catalogue`: a point per dataset of known size, ordered by year, then size."""
    colors = {"human": "#38761d", "model": "#cc0000", "template": "#1155cc", "mixed": "#b45f06"}
    plotted = [r for r in rows if isinstance(r["size"], (int, float)) and r["size"] > 0]  # NaN > 0 is False
    plotted.sort(key=lambda r: (r["year"], r["size"]))
    fig, ax = new_figure(figsize=(10, 4.8))
    for x, r in enumerate(plotted):  # one slot per dataset, grouped by year
        ax.scatter(x, r["size"], color=colors[r["method"]], s=45, zorder=3)
        ax.annotate(
            r["name"], (x, r["size"]), xytext=(3, 5), textcoords="offset points", fontsize=7.5, rotation=35
        )
    years = sorted({r["year"] for r in plotted})
    for i, year in enumerate(years):
        slots = [x for x, r in enumerate(plotted) if r["year"] == year]
        if i % 2:
            ax.axvspan(slots[0] - 0.5, slots[-1] + 0.5, color="#f3f3f3", zorder=0)
        ax.text((slots[0] + slots[-1]) / 2, 0.02, str(year), transform=ax.get_xaxis_transform(), ha="center")
    for method, color in colors.items():
        ax.scatter([], [], color=color, label=method)
    ax.set_yscale("log")
    ax.set_ylim(min(r["size"] for r in plotted) / 3, max(r["size"] for r in plotted) * 30)
    ax.set_xlim(-0.7, len(plotted) - 0.3)
    ax.set_xticks([])
    ax.set_xlabel("datasets, ordered by release year, then size")
    ax.set_ylabel("size (examples, messages or pairs; log)")
    ax.set_title("Open instruction datasets by year and construction method")
    ax.legend(title="how built", fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    return fig


# ---- chapter 07: DeepSpeed-Chat SFT ----
def sft_label_mask(tokens: list[str], labels: list[int], attention_mask: list[int], out_dir=None) -> Path:
    """One record's tokens coloured by role: prompt (-100), answer (learnt), padding (-100) -> build/plots/."""
    fig = sft_label_mask_figure(tokens, labels, attention_mask)
    return save_figure(fig, plot_path("sft_label_mask.png", out_dir))


def sft_label_mask_figure(tokens: list[str], labels: list[int], attention_mask: list[int]):
    """The figure of `sft_label_mask`: a box per token, 16 per row; ValueError unless the lists line up."""
    import matplotlib.patches

    per_row = 16
    rows = (len(tokens) + per_row - 1) // per_row
    fig, ax = new_figure(figsize=(12, 0.42 * rows + 0.6))
    ax.set_xlim(0, per_row)
    ax.set_ylim(rows, -0.8)
    ax.axis("off")
    colors = {"prompt": "#dddddd", "target": "#b6d7a8", "padding": "#ffffff"}
    for i, (tok, lab, att) in enumerate(zip(tokens, labels, attention_mask, strict=True)):
        kind = "padding" if not att else "prompt" if lab == IGNORE_INDEX else "target"
        r, c = divmod(i, per_row)
        ax.add_patch(matplotlib.patches.Rectangle((c + 0.03, r + 0.05), 0.94, 0.9, fc=colors[kind], ec="#999999", lw=0.5))
        ax.text(c + 0.5, r + 0.5, tok.replace("\n", "\\n")[:9], ha="center", va="center", fontsize=7)
    handles = [matplotlib.patches.Rectangle((0, 0), 1, 1, fc=colors[k], ec="#999999") for k in colors]
    labels_txt = ["prompt: label IGNORE_INDEX", "answer + end marker: learnt", "padding: label IGNORE_INDEX"]
    ax.legend(
        handles, labels_txt, loc="upper left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8, frameon=False
    )
    return fig


def sft_loss_curve(history: list[dict], perplexity: list, out_dir=None) -> Path:
    """Training loss per optimizer step and held-out perplexity per epoch -> build/plots/sft_loss_curve.png."""
    fig = sft_loss_curve_figure(history, perplexity)
    return save_figure(fig, plot_path("sft_loss_curve.png", out_dir))


def sft_loss_curve_figure(history: list[dict], perplexity: list):
    """The figure of `sft_loss_curve`: loss per step (left), perplexity per epoch (right)."""
    fig, (ax1, ax2) = new_figure(1, 2, figsize=(9, 3.2))
    ax1.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax1.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", title="SFT loss")
    ax1.grid(alpha=0.3)
    epochs, ppl = zip(*perplexity, strict=True)
    ax2.plot(epochs, ppl, marker="o", color="#cc4125")
    ax2.set(xlabel="epoch (0 = before training)", ylabel="held-out perplexity", title="held-out perplexity")
    ax2.set_xticks(list(epochs))
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
