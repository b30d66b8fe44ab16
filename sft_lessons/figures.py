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
def prompt_learning_stages(out_dir=None) -> Path:
    """The three stages of prompting on one review -> images/prompt_learning_stages.png."""
    from matplotlib.figure import Figure  # no pyplot: the notebook's inline backend stays in place

    fig = Figure(figsize=(11.5, 3.6))
    ax = fig.subplots()
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    w, h, y = 2.45, 1.5, 1.0
    stages = [
        ("input x", '"A warm, funny film\nwith a terrific cast."', "#eeeeee"),
        (
            "1. prompt addition\nf_prompt(x)",
            "Review: [X]\nSentiment: [Z]\n-> Review: A warm, ...\nSentiment: [Z]",
            "#cfe2f3",
        ),
        (
            "2. answer search\nz = argmax P(z | prompt)",
            "log P(' positive' | prompt)\nvs\nlog P(' negative' | prompt)\n-> pick the higher",
            "#d9ead3",
        ),
        (
            "3. answer mapping\nverbalizer",
            "' positive' -> 1 (pos)\n' negative' -> 0 (neg)\n=> label y = 1",
            "#fff2cc",
        ),
    ]
    xs = [0.1, 3.05, 6.0, 8.95]
    for x, (title, body, color) in zip(xs, stages, strict=True):
        _box(ax, x, y, w, h, body, color, fontsize=8.5)
        ax.text(x + w / 2, y + h + 0.35, title, ha="center", va="center", fontsize=9, weight="bold")
    for a, b in zip(xs, xs[1:], strict=False):
        _arrow(ax, a + w, y + h / 2, b, y + h / 2)
    ax.text(
        0.1,
        0.35,
        "The LM is frozen: only the text around x changes. Template [X]/[Z] slots and verbalizer after Liu et al. 2021.",
        fontsize=8.5,
        style="italic",
    )
    return _save(fig, _out("prompt_learning_stages.png", out_dir))


# ---- chapter 02: in-context learning ----
def icl_prefix_cache(out_dir=None) -> Path:
    """A k-shot prompt (demonstrations + query) and the reuse of the demonstrations' KV cache -> images/icl_prefix_cache.png."""
    from matplotlib.figure import Figure  # no pyplot: the notebook's inline backend stays in place

    fig = Figure(figsize=(11.5, 4.0))
    ax = fig.subplots()
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 4.0)
    ax.axis("off")
    demos = [
        "Review: x1\nSentiment: positive",
        "Review: x2\nSentiment: negative",
        "...",
        "Review: xk\nSentiment: positive",
    ]
    for i, text in enumerate(demos):
        _box(ax, 0.1 + i * 1.75, 2.3, 1.6, 0.9, text, "#cfe2f3", fontsize=7.5)
    _box(ax, 7.2, 2.3, 1.9, 0.9, "Review: x_query\nSentiment: [Z]", "#fce5cd", fontsize=7.5)
    _box(ax, 9.55, 2.3, 1.8, 0.9, "frozen LM\n-> ' positive'?\n(no weight update)", "#eeeeee", fontsize=7.5)
    _arrow(ax, 9.1, 2.75, 9.55, 2.75)
    ax.text(0.1, 3.55, "k demonstrations (shared by every query)", fontsize=9, weight="bold")
    ax.text(7.2, 3.55, "query", fontsize=9, weight="bold")
    _box(
        ax,
        0.1,
        0.6,
        6.85,
        0.9,
        "prefix: run once -> KV cache (keys, values per layer)",
        "#d9ead3",
        fontsize=8.5,
    )
    _box(ax, 7.2, 0.6, 1.9, 0.9, "per query batch:\nreuse a copy", "#fff2cc", fontsize=8)
    _arrow(ax, 6.95, 1.05, 7.2, 1.05)
    ax.text(
        0.1,
        0.2,
        "Cost per query: naive ~ (prefix + query) tokens; cached ~ query tokens (attention still reads the cached prefix).",
        fontsize=8.5,
        style="italic",
    )
    return _save(fig, _out("icl_prefix_cache.png", out_dir))


# ---- chapter 03: LoRA math ----
# (chapter 03 figures go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 figures go here)


# ---- chapter 05: context extension ----
# (chapter 05 figures go here)


# ---- chapter 06: instruction data ----
# (chapter 06 figures go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 figures go here)
