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
# (chapter 06 figures go here)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 2.0))
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
    return _save(fig, _out("sft_pipeline.png", out_dir))


def sft_label_mask(tokens: list[str], labels: list[int], attention_mask: list[int], out_dir=None) -> Path:
    """One record's tokens coloured by role: prompt (-100), answer (learnt), padding (-100) -> images/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = 16
    rows = (len(tokens) + per_row - 1) // per_row
    fig, ax = plt.subplots(figsize=(12, 0.42 * rows + 0.6))
    ax.set_xlim(0, per_row)
    ax.set_ylim(rows, -0.8)
    ax.axis("off")
    colors = {"prompt": "#dddddd", "target": "#b6d7a8", "padding": "#ffffff"}
    for i, (tok, lab, att) in enumerate(zip(tokens, labels, attention_mask, strict=True)):
        kind = "padding" if not att else "prompt" if lab == -100 else "target"
        r, c = divmod(i, per_row)
        ax.add_patch(plt.Rectangle((c + 0.03, r + 0.05), 0.94, 0.9, fc=colors[kind], ec="#999999", lw=0.5))
        ax.text(c + 0.5, r + 0.5, tok.replace("\n", "\\n")[:9], ha="center", va="center", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, fc=colors[k], ec="#999999") for k in colors]
    labels_txt = ["prompt: label -100", "answer + end marker: learnt", "padding: label -100"]
    ax.legend(
        handles, labels_txt, loc="upper left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8, frameon=False
    )
    return _save(fig, _out("sft_label_mask.png", out_dir))


def sft_loss_curve(history: list[dict], perplexity: list, out_dir=None) -> Path:
    """Training loss per optimizer step and held-out perplexity per epoch -> images/sft_loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    ax1.set(xlabel="optimizer step", ylabel="training loss (answer tokens)", title="SFT loss")
    ax1.grid(alpha=0.3)
    epochs, ppl = zip(*perplexity, strict=True)
    ax2.plot(epochs, ppl, marker="o", color="#cc4125")
    ax2.set(xlabel="epoch (0 = before training)", ylabel="held-out perplexity", title="held-out perplexity")
    ax2.set_xticks(list(epochs))
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, _out("sft_loss_curve.png", out_dir))
