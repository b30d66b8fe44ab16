"""Diagrams for the notebooks and the README, drawn into images/ by `sft-lessons figures` (English labels, no data).

The notebooks show the committed PNGs; running a notebook never redraws them. Plots of measured results: plots.py.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import images_dir


def output_path(name: str, out_dir=None) -> Path:
    """out_dir/name, by default images/name."""
    folder = Path(out_dir) if out_dir else images_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def new_figure(*args, figsize, **kwargs):
    """(fig, axes) without pyplot: no backend switch, so a notebook's inline plots keep working."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: release it
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
    fig, ax = new_figure(figsize=(11.5, 4.2))
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
    return save_figure(fig, output_path("course_map.png", out_dir))


# ---- chapter 01: prompt learning ----
def prompt_learning_stages(out_dir=None) -> Path:
    """The three stages of prompting on one review -> images/prompt_learning_stages.png."""
    fig, ax = new_figure(figsize=(11.5, 3.6))
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
    return save_figure(fig, output_path("prompt_learning_stages.png", out_dir))


# ---- chapter 02: in-context learning ----
def icl_prefix_cache(out_dir=None) -> Path:
    """A k-shot prompt (demonstrations + query) and the reuse of the demonstrations' KV cache -> images/icl_prefix_cache.png."""
    fig, ax = new_figure(figsize=(11.5, 4.0))
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
    _box(ax, 7.2, 0.6, 1.9, 0.9, "per query batch:\na new cache object\n(prefix K, V copied)", "#fff2cc", fontsize=7.5)
    _arrow(ax, 6.95, 1.05, 7.2, 1.05)
    ax.text(
        0.1,
        0.2,
        "Positions per query: naive ~ prefix P + query; cached ~ query + P/n (n queries). "
        "Attention still reads the P cached keys at every query position.",
        fontsize=8.5,
        style="italic",
    )
    return save_figure(fig, output_path("icl_prefix_cache.png", out_dir))


# ---- chapter 03: LoRA math ----
def lora_structure(out_dir=None) -> Path:
    """The LoRA layer: frozen W0 beside the trainable A (r x k) -> B (d x r) path -> images/lora_structure.png."""
    import matplotlib.patches
    from matplotlib.patches import Polygon

    fig, ax = new_figure(figsize=(7.2, 4.6))
    ax.set_xlim(0, 7.2)
    ax.set_ylim(0, 4.6)
    ax.axis("off")
    _box(
        ax,
        0.4,
        1.55,
        2.6,
        1.3,
        "Pretrained weight\n$W_0 \\in \\mathbb{R}^{d \\times k}$\nfrozen",
        "#dddddd",
        10,
    )
    trapezoids = [  # A narrows k -> r, B widens r -> d
        (
            [(3.9, 1.2), (6.5, 1.2), (5.6, 2.0), (4.8, 2.0)],
            "$A \\in \\mathbb{R}^{r \\times k}$\ninit: Kaiming-uniform",
        ),
        (
            [(4.8, 2.4), (5.6, 2.4), (6.5, 3.2), (3.9, 3.2)],
            "$B \\in \\mathbb{R}^{d \\times r}$\ninit: $B = 0$",
        ),
    ]
    for corners, label in trapezoids:
        ax.add_patch(Polygon(corners, closed=True, fc="#f9cb9c", ec="#333333", lw=1.0))
        ax.text(5.2, (corners[0][1] + corners[2][1]) / 2, label, ha="center", va="center", fontsize=8.5)
    ax.text(6.55, 2.35, "rank r", fontsize=9, va="center")
    ax.text(6.55, 2.05, "trainable", fontsize=9, va="center", color="#b45f06")
    ax.text(3.6, 0.2, "input $x \\in \\mathbb{R}^{k}$", ha="center", fontsize=10)
    ax.text(
        3.6,
        4.35,
        "output $h = W_0 x + \\frac{\\alpha}{r} B A x \\in \\mathbb{R}^{d}$",
        ha="center",
        fontsize=10,
    )
    ax.add_patch(matplotlib.patches.Circle((3.6, 3.75), 0.2, fc="white", ec="#333333"))
    ax.text(3.6, 3.75, "+", ha="center", va="center", fontsize=12)
    for x0, y0, x1, y1 in [(3.6, 0.45, 1.7, 1.55), (3.6, 0.45, 5.2, 1.2), (5.2, 2.0, 5.2, 2.4),
                           (1.7, 2.85, 3.42, 3.7), (5.2, 3.2, 3.78, 3.7), (3.6, 3.95, 3.6, 4.2)]:  # fmt: skip
        _arrow(ax, x0, y0, x1, y1)
    ax.text(4.6, 3.55, "scale $s = \\alpha / r$", fontsize=8.5, color="#444444")
    ax.text(0.1, 0.2, "merge for inference: $W = W_0 + sBA$", fontsize=8.5, color="#444444")
    return save_figure(fig, output_path("lora_structure.png", out_dir))


# ---- chapter 04: LoRA variants ----
def lora_variants_map(out_dir=None) -> Path:
    """What chapter 4 builds: full fine-tuning, LoRA, AdaLoRA and QLoRA side by side -> images/lora_variants.png."""
    fig, ax = new_figure(figsize=(11.5, 3.6))
    ax.set_xlim(0, 11.5)
    ax.set_ylim(0, 3.6)
    ax.axis("off")
    panels = [
        ("Full fine-tuning", "W (fp32)\ntrainable", "grads + Adam states\nfor every weight", "#f4cccc"),
        ("LoRA", "W0 frozen\n+ (alpha/r) B A", "grads + Adam states\nonly for A, B", "#d9ead3"),
        ("AdaLoRA", "W0 frozen\n+ P diag(lambda) Q", "mask triplets with low\nimportance scores", "#cfe2f3"),
        ("QLoRA", "W0 in NF4 (4-bit)\n+ 16-bit B A", "dequantize on the fly;\nbackprop into A, B", "#fff2cc"),
    ]
    for i, (title, top, bottom, color) in enumerate(panels):
        x = 0.15 + i * 2.85
        ax.text(x + 1.3, 3.35, title, ha="center", fontsize=11, weight="bold")
        _box(ax, x, 1.85, 2.6, 1.1, top, color)
        _box(ax, x, 0.35, 2.6, 1.1, bottom, "#eeeeee")
        _arrow(ax, x + 1.3, 1.85, x + 1.3, 1.45)
    return save_figure(fig, output_path("lora_variants.png", out_dir))


# ---- chapter 05: context extension ----
def rope_wavelengths(out_dir=None) -> Path:
    """Wavelength of every RoPE pair for head_dim 64 at theta 1e4 and 1e5 (SmolLM2) -> images/ch05_rope_wavelengths.png."""
    from ..rope import rope_frequencies, wavelengths

    fig, ax = new_figure(figsize=(6.4, 3.4))
    for theta, style in ((10_000.0, "--"), (100_000.0, "-")):
        lam = wavelengths(rope_frequencies(64, theta))
        ax.plot(range(len(lam)), lam, style, marker=".", label=f"theta = {theta:,.0f}")
    ax.axhline(8192, color="gray", lw=1)
    ax.text(1, 8192 * 1.3, "SmolLM2 window (8192)", fontsize=8, color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("pair index i (head_dim = 64)")
    ax.set_ylabel("wavelength 2*pi/theta_i (tokens)")
    ax.set_title("RoPE: each pair turns at its own speed")
    ax.legend(fontsize=8)
    return save_figure(fig, output_path("ch05_rope_wavelengths.png", out_dir))


def interpolation_vs_extrapolation(out_dir=None, train_len: int = 64, factor: float = 4.0) -> Path:
    """Angles a slow pair reaches (unit circle) and per-pair frequency ratios of PI / NTK / YaRN -> images/."""
    import numpy as np

    from ..rope import ntk_theta, rope_frequencies, yarn_frequencies

    fig, (ax1, ax2) = new_figure(1, 2, figsize=(10.5, 4.2))
    omega = 2 * np.pi / (5 * train_len)  # a slow pair: 0.2 turns within the training window
    pos = np.arange(0, int(factor * train_len))
    ax1.plot(np.cos(np.linspace(0, 2 * np.pi, 200)), np.sin(np.linspace(0, 2 * np.pi, 200)), color="#dddddd")
    seen, unseen = pos < train_len, pos >= train_len
    ax1.scatter(
        np.cos(omega * pos[unseen]) * 1.12,
        np.sin(omega * pos[unseen]) * 1.12,
        s=6,
        c="#d62728",
        label=f"extrapolation: positions {train_len}..{pos[-1]} (unseen angles)",
    )
    ax1.scatter(
        np.cos(omega * pos / factor) * 0.88,
        np.sin(omega * pos / factor) * 0.88,
        s=6,
        c="#2ca02c",
        label=f"interpolation (PI, s={factor:g}): all {len(pos)} positions",
    )
    ax1.scatter(
        np.cos(omega * pos[seen]),
        np.sin(omega * pos[seen]),
        s=6,
        c="#1f77b4",
        label=f"trained: positions 0..{train_len - 1}",
    )
    ax1.set_aspect("equal")
    ax1.set_xlim(-1.5, 1.5)
    ax1.set_ylim(-1.9, 1.5)
    ax1.axis("off")
    ax1.legend(fontsize=7.5, loc="lower center")
    ax1.set_title("angle of one slow RoPE pair")

    d, theta, orig = 64, 100_000.0, 8192  # SmolLM2's head_dim, base and window
    base = rope_frequencies(d, theta)
    ratios = {
        "linear PI": base / factor / base,
        "NTK-aware base": rope_frequencies(d, ntk_theta(theta, factor, d)) / base,
        "YaRN (NTK-by-parts)": yarn_frequencies(d, theta, factor, orig)[0] / base,
    }
    for name, r in ratios.items():
        ax2.plot(range(d // 2), r.numpy(), marker=".", label=name)
    ax2.axhline(1, color="gray", lw=0.8)
    ax2.set_ylim(0, 1.08)
    ax2.set_xlabel("pair index i (fast -> slow), head_dim 64, theta 1e5, window 8192")
    ax2.set_ylabel("new frequency / old frequency")
    ax2.set_title(f"how each method slows the pairs (s = {factor:g})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, output_path("ch05_interpolation_vs_extrapolation.png", out_dir))


# ---- chapter 06: instruction data ----


def self_instruct_pipeline(out_dir=None) -> Path:
    """Self-Instruct's four steps as a loop around the task pool -> images/self_instruct_pipeline.png."""
    fig, ax = new_figure(figsize=(11, 3.6))
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
    return save_figure(fig, output_path("self_instruct_pipeline.png", out_dir))


# ---- chapter 07: DeepSpeed-Chat SFT ----
SFT_STEPS = [
    ("hh_sft.jsonl\nprompt + chosen", "#eeeeee"),
    ("create_prompt_dataset\nsplit, tokenize, mask,\nsha256 cache", "#cfe2f3"),
    ("LoRA on layers.*\nonly_optimize_lora", "#d9ead3"),
    ("deepspeed.initialize\nZeRO 0-3, grad accum,\nwarmup + cosine", "#fff2cc"),
    ("evaluate\nperplexity, house style,\nclean stops", "#fce5cd"),
    ("fuse + save_hf_format\n-> from_pretrained", "#f4cccc"),
]


def sft_pipeline(out_dir=None) -> Path:
    """Chapter 7's pipeline, data file to reloadable checkpoint -> images/sft_pipeline.png."""
    fig, ax = new_figure(figsize=(12, 2.0))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 2.0)
    ax.axis("off")
    w, h, gap = 1.75, 1.1, 0.25
    for i, (text, color) in enumerate(SFT_STEPS):
        x = 0.05 + i * (w + gap)
        _box(ax, x, 0.3, w, h, text, color, fontsize=8)
        if i:
            _arrow(ax, x - gap, 0.3 + h / 2, x, 0.3 + h / 2)
    ax.text(0.05, 1.75, "DeepSpeed-Chat step 1 (SFT), run for real", fontsize=11, weight="bold")
    return save_figure(fig, output_path("sft_pipeline.png", out_dir))


DIAGRAMS = (
    course_map,
    prompt_learning_stages,
    icl_prefix_cache,
    lora_structure,
    lora_variants_map,
    rope_wavelengths,
    interpolation_vs_extrapolation,
    self_instruct_pipeline,
    sft_pipeline,
)


def draw_all(out_dir=None) -> list[Path]:
    """Redraw every diagram into out_dir (default images/): what `sft-lessons figures` runs."""
    return [draw(out_dir) for draw in DIAGRAMS]
