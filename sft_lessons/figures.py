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
def rope_wavelengths(out_dir=None) -> Path:
    """Wavelength of every RoPE pair for head_dim 64 at theta 1e4 and 1e5 (SmolLM2) -> images/ch05_rope_wavelengths.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .rope import rope_frequencies, wavelengths

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
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
    return _save(fig, _out("ch05_rope_wavelengths.png", out_dir))


def interpolation_vs_extrapolation(out_dir=None, train_len: int = 64, factor: float = 4.0) -> Path:
    """Angles a slow pair reaches (unit circle) and per-pair frequency ratios of PI / NTK / YaRN -> images/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .rope import ntk_theta, rope_frequencies, yarn_frequencies

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
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
    return _save(fig, _out("ch05_interpolation_vs_extrapolation.png", out_dir))


def as_png(fig, dpi: int = 90):
    """An IPython Image of `fig`: shows inline whatever matplotlib backend is active (the figure helpers use Agg)."""
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
# (chapter 06 figures go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 figures go here)
