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
    """Log-log plot of LoRA trainable parameters vs rank, one line per model; dashed: full FT of the same projections."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (label, rows), color in zip(tables.items(), ["C0", "C1", "C2", "C3"], strict=False):
        ax.plot(ranks, [row["per_model"] for row in rows], "o-", color=color, label=f"{label}: LoRA")
        ax.axhline(rows[0]["full_per_model"], color=color, ls="--", lw=1, label=f"{label}: full FT of these projections")
    ax.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable parameters")
    ax.set_xticks(list(ranks), [str(r) for r in ranks])
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: full-FT lines reach the top
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
def training_curves(results: dict, out_dir=None, name: str = "full_vs_lora_curves.png",
                    eval_title: str = "eval accuracy") -> Path:
    """Training loss per logged step and eval accuracy per epoch, one line per run -> build/plots/<name>."""
    return save_figure(training_curves_figure(results, eval_title), plot_path(name, out_dir))


def training_curves_figure(results: dict, eval_title: str = "eval accuracy"):
    """The figure of `training_curves`: left, loss per step; right, accuracy per epoch (one line per run)."""
    fig, (ax_loss, ax_acc) = new_figure(1, 2, figsize=(10, 3.4))
    for label, res in results.items():
        steps, losses = zip(*res["train_loss"], strict=True)
        ax_loss.plot(steps, losses, marker=".", label=label)
        epochs = range(1, len(res["eval_accuracy"]) + 1)
        ax_acc.plot(epochs, res["eval_accuracy"], marker="o", label=label)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="training loss (logged every 5 steps)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=eval_title)
    ax_acc.set_xticks(list(range(1, max(len(r["eval_accuracy"]) for r in results.values()) + 1)))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def lr_sweep(sweep: dict, chosen: dict, out_dir=None, name: str = "lr_sweep.png", chance: float = 0.5) -> Path:
    """Dev accuracy (Wilson interval) against learning rate, one line per method -> build/plots/<name>."""
    return save_figure(lr_sweep_figure(sweep, chosen, chance), plot_path(name, out_dir))


def lr_sweep_figure(sweep: dict, chosen: dict, chance: float = 0.5):
    """The figure of `lr_sweep`: sweep maps method -> [(lr, Proportion)], chosen maps method -> its chosen lr."""
    fig, ax = new_figure(figsize=(7.5, 3.6))
    for i, (method, points) in enumerate(sweep.items()):
        rates = [lr * 1.06 ** (i - 1.5) for lr, _ in points]  # a small offset so that error bars do not overlap
        values = [p.value for _, p in points]
        errors = [[p.value - p.low for _, p in points], [p.high - p.value for _, p in points]]
        line = ax.errorbar(rates, values, yerr=errors, marker="o", capsize=3, label=method)
        best = [(r, v) for r, v, (lr, _) in zip(rates, values, points, strict=True) if lr == chosen[method]]
        ax.plot(*zip(*best, strict=True), marker="*", markersize=15, color=line[0].get_color(), ls="none")
    ax.axhline(chance, color="grey", ls="--", lw=1, label="always one class")
    n = next(iter(sweep.values()))[0][1].n
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"dev accuracy (n={n}, 95% CI)", ylim=(0.3, 1.0),
           title="learning-rate sweep on dev (star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
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
    ax.set_xlabel({1e9: "GB", 2**30: "GiB"}.get(unit, f"x {unit:g} bytes"))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
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
        text = tok.replace("\n", "\\n")
        text = text if len(text) <= 9 else text[:8] + "…"  # cut labels say so
        ax.text(c + 0.5, r + 0.5, text, ha="center", va="center", fontsize=7)
    handles = [matplotlib.patches.Rectangle((0, 0), 1, 1, fc=colors[k], ec="#999999") for k in colors]
    labels_txt = ["prompt, template: label IGNORE_INDEX", "answer + end marker: learnt", "padding: label IGNORE_INDEX"]
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
    ax2.set(xlabel="after epoch (0 = before training; the last may stop early at --max_steps)", ylabel="held-out perplexity", title="held-out perplexity")
    ax2.set_xticks(list(epochs))
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- chapter 05: context extension, measured on the toy model ----
def first_layer_logits(curves: dict, reference: float, train_len: int, out_dir=None) -> Path:
    """Layer-0 max |attention logit| against relative distance, per length -> build/plots/first_layer_logits.png."""
    fig = first_layer_logits_figure(curves, reference, train_len)
    return save_figure(fig, plot_path("first_layer_logits.png", out_dir))


def first_layer_logits_figure(curves: dict, reference: float, train_len: int):
    """One panel per length of {length: {method: (T,) max |logit| at distance 0..T-1}}; dashed: the training max.

    Curves longer than 64 points are drawn as the max over bins of T // 64 distances (the envelope stays exact).
    """
    import numpy as np

    lengths = sorted(curves)
    fig, axes = new_figure(1, len(lengths), figsize=(3.2 * len(lengths), 2.7), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths, strict=True):
        ax.axvspan(0, train_len - 1, color="#e8e8e8", zorder=0, label=f"distances seen in training (< {train_len})")
        for method, values in curves[length].items():
            values = np.asarray([float(v) for v in values])
            step = max(1, len(values) // 64)
            pooled = values[: len(values) // step * step].reshape(-1, step).max(1)  # (bins,)
            ax.plot(range(0, len(pooled) * step, step), pooled, lw=0.9, label=method)
        ax.axhline(reference, color="black", ls="--", lw=1, label=f"max at the training length {train_len}")
        ax.set_title(f"{length} tokens" + (f" (max per {step} distances)" if step > 1 else ""), fontsize=9)
        ax.set_xlabel("relative distance i - j (tokens)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("layer 0: max |q.k| / sqrt(d)", fontsize=8)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend below the panels
    return fig


def copy_source(profiles: dict, train_len: int, out_dir=None) -> Path:
    """Where the copied token comes from, per method and length -> build/plots/copy_source.png."""
    return save_figure(copy_source_figure(profiles, train_len), plot_path("copy_source.png", out_dir))


def copy_source_figure(profiles: dict, train_len: int):
    """One panel per length of {length: {method: (L/2+1,) share}}: share of predictions equal to the token k back."""
    lengths = sorted(profiles)
    fig, axes = new_figure(1, len(lengths), figsize=(3.2 * len(lengths), 2.7), squeeze=False, sharey=True)
    for ax, length in zip(axes[0], lengths, strict=True):
        for method, share in profiles[length].items():
            ax.plot(range(1, len(share)), [float(v) for v in share[1:]], lw=1, label=method)
        ax.axvline(train_len // 2, color="gray", ls=":", lw=1, label=f"k = {train_len // 2} (right in training)")
        ax.axvline(length // 2, color="black", ls="--", lw=1, label="k = L/2 (right at this length)")
        ax.set_title(f"copy at {length} tokens", fontsize=9)
        ax.set_xlabel("k: predicted token equals the token k back", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of predictions", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def finetune_curves(curves: dict, chance: float, out_dir=None, name: str = "finetune_curves.png") -> Path:
    """Eval loss per fine-tuning step, mean over seeds with a min-max band -> build/plots/<name>."""
    return save_figure(finetune_curves_figure(curves, chance), plot_path(name, out_dir))


def finetune_curves_figure(curves: dict, chance: float):
    """{name: {step: [loss per seed]}} -> one mean line and a min-max band per start; dotted: uniform guessing."""
    import numpy as np

    fig, ax = new_figure(figsize=(5.4, 3.1))
    for label, points in curves.items():
        steps = sorted(points)
        values = np.array([points[s] for s in steps], dtype=float)  # (steps, seeds)
        (line,) = ax.plot(steps, values.mean(1), marker="o", label=f"{label} (mean of {values.shape[1]} seeds)")
        ax.fill_between(steps, values.min(1), values.max(1), color=line.get_color(), alpha=0.2)
    ax.axhline(chance, color="gray", ls=":", lw=1, label=f"uniform guess over the copy tokens ({chance:.2f})")
    ax.set(xlabel="fine-tuning step", ylabel="copy loss at 256 tokens (nats)", title="band: min to max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
