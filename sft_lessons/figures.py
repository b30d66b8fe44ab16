"""Figures for the notebooks and the README, generated into images/ (rerunnable, English labels)."""

from __future__ import annotations

from pathlib import Path


def _out(name: str, out_dir=None) -> Path:
    from .paths import images_dir

    return Path(out_dir or images_dir()) / name


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _box(ax, x, y, w, h, text, color, fontsize=9):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#333333", lw=1.0
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)


def _arrow(ax, x0, y0, x1, y1):
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#444444", lw=1.2))


COURSE = [
    ("00", "Overview\nreal models, data, setup", "#eeeeee"),
    ("01", "Prompt learning\ntemplate -> search -> mapping", "#cfe2f3"),
    ("02", "In-context learning\ndemos, KV-cache reuse", "#cfe2f3"),
    ("03", "LoRA math\nh = W0 x + BAx", "#d9ead3"),
    ("04", "LoRA in practice\nfull vs LoRA, AdaLoRA, QLoRA", "#d9ead3"),
    ("05", "Context extension\nRoPE, PI, NTK, YaRN, ALiBi", "#fff2cc"),
    ("06", "Instruction data\ncuration, Self-Instruct", "#fce5cd"),
    ("07", "DeepSpeed-Chat step 1\nSFT for real", "#f4cccc"),
]


def course_map(out_dir=None) -> Path:
    """The chapter map: three tracks (prompting, parameter-efficient tuning, data + SFT) -> images/course_map.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 4.2))
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 4.2)
    ax.axis("off")
    w, h = 2.5, 0.9
    cols, rows = (0.1, 3.0, 5.8, 8.9), (3.05, 1.65, 0.25)
    pos = {
        "00": (cols[0], rows[1]),
        "01": (cols[1], rows[0]),
        "02": (cols[2], rows[0]),
        "03": (cols[1], rows[1]),
        "04": (cols[2], rows[1]),
        "05": (cols[1], rows[2]),
        "06": (cols[2], rows[2]),
        "07": (cols[3], rows[1]),
    }
    for key, text, color in COURSE:
        _box(ax, *pos[key], w, h, f"{key}  {text}", color, fontsize=8.5)
    for a, b in [
        ("00", "01"),
        ("00", "03"),
        ("00", "05"),
        ("01", "02"),
        ("03", "04"),
        ("05", "06"),
        ("02", "07"),
        ("04", "07"),
        ("06", "07"),
    ]:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        _arrow(ax, xa + w, ya + h / 2, xb, yb + h / 2)
    ax.text(0.1, 4.05, "sft-lessons: course map (arrows = builds on)", fontsize=11, weight="bold")
    return _save(fig, _out("course_map.png", out_dir))


# ---- chapter 01: prompt learning ----
# (chapter 01 figures go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 figures go here)


# ---- chapter 03: LoRA math ----
# (chapter 03 figures go here)


# ---- chapter 04: LoRA variants ----
def lora_variants_map(out_dir=None) -> Path:
    """What chapter 4 builds: full fine-tuning, LoRA, AdaLoRA and QLoRA side by side -> images/lora_variants.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 3.6))
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    panels = [
        ("Full fine-tuning", "W (fp32)\ntrainable", "grads + Adam states\nfor every weight", "#f4cccc"),
        ("LoRA", "W0 frozen\n+ (alpha/r) B A", "grads + Adam states\nonly for A, B", "#d9ead3"),
        ("AdaLoRA", "W0 frozen\n+ P diag(lambda) Q", "prune small singular\nvalues: budget moves", "#cfe2f3"),
        ("QLoRA", "W0 in NF4 (4-bit)\n+ 16-bit B A", "dequantize on the fly;\nbackprop into A, B", "#fff2cc"),
    ]
    for i, (title, top, bottom, color) in enumerate(panels):
        x = 0.15 + i * 2.85
        ax.text(x + 1.3, 3.35, title, ha="center", fontsize=11, weight="bold")
        _box(ax, x, 1.85, 2.6, 1.1, top, color)
        _box(ax, x, 0.35, 2.6, 1.1, bottom, "#eeeeee")
        _arrow(ax, x + 1.3, 1.85, x + 1.3, 1.45)
    return _save(fig, _out("lora_variants.png", out_dir))


def training_curves(results: dict, out_dir=None, name: str = "full_vs_lora_curves.png") -> Path:
    """Training loss per logged step and eval accuracy per epoch, one line per run -> images/<name>."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.4))
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
    return _save(fig, _out(name, out_dir))


def adalora_ranks(table, history, out_dir=None) -> Path:
    """AdaLoRA's final rank per layer and module (heatmap); scheduled budget and live singular values per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_map, ax_budget) = plt.subplots(1, 2, figsize=(10.5, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
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
    return _save(fig, _out("adalora_ranks.png", out_dir))


def memory_breakdown(rows: dict, out_dir=None, name: str = "memory_65b.png", unit: float = 1e9) -> Path:
    """Stacked bars of an estimate_training_memory breakdown per setting (values in `unit`, GB by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ["weights", "quant_constants", "gradients", "optimizer_states", "master_weights", "activations"]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
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
    return _save(fig, _out(name, out_dir))


# ---- chapter 05: context extension ----
# (chapter 05 figures go here)


# ---- chapter 06: instruction data ----
# (chapter 06 figures go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 figures go here)
