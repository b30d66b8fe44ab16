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
# (chapter 04 figures go here)


# ---- chapter 05: context extension ----
# (chapter 05 figures go here)


# ---- chapter 06: instruction data ----


def self_instruct_pipeline(out_dir=None) -> Path:
    """Self-Instruct's four steps as a loop around the task pool -> images/self_instruct_pipeline.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    w, h, y = 2.05, 1.25, 1.45
    steps = [
        (0.1, "Task pool\nhuman seeds\n+ kept machine tasks", "#eeeeee"),
        (2.27, "1. Instruction generation\n6 seed + 2 machine tasks\nin context -> new tasks", "#cfe2f3"),
        (4.45, "2. Classification?\nfew-shot Yes/No\n(next-token logits)", "#d9ead3"),
        (6.62, "3. Instance generation\nclassification: output-first\nother: input-first", "#fff2cc"),
        (8.8, "4. Filtering\nROUGE-L < 0.7 vs pool,\nkeywords, length;\ninvalid instances", "#fce5cd"),
    ]
    for x, text, color in steps:
        _box(ax, x, y, w, h, text, color, fontsize=8)
    for (x0, _, _), (x1, _, _) in zip(steps, steps[1:], strict=False):
        _arrow(ax, x0 + w, y + h / 2, x1, y + h / 2)
    ax.annotate(
        "",
        xy=(1.1, y),
        xytext=(9.9, y),
        arrowprops=dict(arrowstyle="->", color="#444444", lw=1.2, connectionstyle="arc3,rad=-0.18"),
    )
    ax.text(5.5, 0.15, "kept tasks join the pool; the next round samples from it", ha="center", fontsize=9)
    ax.text(
        0.1,
        3.3,
        "Self-Instruct (Wang et al., 2022): bootstrapping instruction data from a model",
        fontsize=11,
        weight="bold",
    )
    return _save(fig, _out("self_instruct_pipeline.png", out_dir))


def curation_funnel(funnel: list[tuple[str, int]], out_dir=None) -> Path:
    """Records left after each curation stage, as horizontal bars -> images/curation_funnel.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = zip(*funnel, strict=True)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    bars = ax.barh(range(len(counts)), counts, color="#6fa8dc")
    ax.set_yticks(range(len(names)), [f"after {n}" if i else n for i, n in enumerate(names)])
    ax.invert_yaxis()
    for bar, n in zip(bars, counts, strict=True):
        ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2, str(n), va="center", fontsize=9)
    ax.set_xlabel("records left")
    ax.set_title("Curation funnel on raw_qa_pool.jsonl")
    ax.set_xlim(0, max(counts) * 1.12)
    return _save(fig, _out("curation_funnel.png", out_dir))


def dataset_catalogue(rows: list[dict], out_dir=None) -> Path:
    """Open instruction datasets: size (log scale) by year, coloured by construction method -> images/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"human": "#38761d", "model": "#cc0000", "template": "#1155cc", "mixed": "#b45f06"}
    plotted = [r for r in rows if isinstance(r["size"], (int, float)) and r["size"] > 0]  # NaN > 0 is False
    plotted.sort(key=lambda r: (r["year"], r["size"]))
    fig, ax = plt.subplots(figsize=(10, 4.8))
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
    return _save(fig, _out("instruction_datasets.png", out_dir))


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 figures go here)
