"""`sft-lessons bench --sections trl`: `sft-lessons sft` against TRL's SFTTrainer on the same work, each run in its own
process, back to back: the same records, model, LoRA (r, alpha, targets), optimizer, schedule, batch and device."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

VARIANTS = ("ours_longest", "ours_grouped", "ours_padding_free", "trl_default", "trl_grouped", "trl_padding_free",
            "trl_packing")
OURS = ("ours_longest", "ours_grouped", "ours_padding_free")
# the same batching on both sides: ours / TRL
PAIRS = {"longest": ("ours_longest", "trl_default"), "grouped": ("ours_grouped", "trl_grouped"),
         "padding_free": ("ours_padding_free", "trl_padding_free")}


@dataclass
class TrlBenchConfig:
    """The shared work; the defaults fit a 2-core CPU in about ten minutes, `quick` uses a tiny random model."""

    quick: bool = False
    records: int = 96  # training records: one epoch over them, batch_size per step (12 steps)
    batch_size: int = 8
    max_seq_len: int = 160  # records longer than this are left out (never cut), as `sft-lessons sft` does
    lora_r: int = 8
    lora_alpha: int = 16
    learning_rate: float = 5e-4
    rounds: int = 3  # each round runs every variant once with its own seed, in a rotated order
    seed: int = 1234
    eval_batch_size: int = 8  # the held-out pass (no gradients) stays far below the training peak
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))

    @classmethod
    def preset(cls, quick: bool = False, variants=None) -> TrlBenchConfig:
        """The full comparison, or with quick=True a tiny random model on 16 records in one round (CI)."""
        cfg = cls(quick=quick)
        if quick:
            cfg.records, cfg.batch_size, cfg.max_seq_len, cfg.rounds = 16, 4, 384, 1
        if variants:
            unknown = sorted(set(variants) - set(VARIANTS))
            if unknown:
                raise ValueError(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
            cfg.variants = list(variants)
        return cfg


def prepare_work(cfg: TrlBenchConfig, folder: Path, model_path: Path, tokenizer) -> dict:
    """Write the shared records (the first `records` training records that fit, all held-out ones) to a .jsonl."""
    from ..data import data_path, load_jsonl
    from ..dschat import HH_FIELDS, LOCAL_DATASETS, build_chat_example, get_raw_dataset, record_messages

    raw = get_raw_dataset("local/hh_sft")
    fits = [r for r in raw.get_train_data()
            if build_chat_example(tokenizer, record_messages(raw, r), cfg.max_seq_len) is not None]  # fmt: skip
    if len(fits) < cfg.records:
        raise ValueError(f"max_seq_len {cfg.max_seq_len} keeps {len(fits)} training records, {cfg.records} needed")
    chosen = {r["id"] for r in fits[: cfg.records]}
    rows = [r for r in load_jsonl(data_path(LOCAL_DATASETS["local/hh_sft"]), HH_FIELDS)
            if r["split"] == "test" or r["id"] in chosen]  # fmt: skip
    records = folder / "records.jsonl"
    records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return {"records": str(records), "model": str(model_path), "config": asdict(cfg), "folder": str(folder)}


def _eval_set(work: dict, tokenizer, seed: int):
    """The held-out records as a phase-1 PromptDataset (the same tensors for every variant)."""
    from ..dschat import create_prompt_dataset

    cfg = work["config"]
    return create_prompt_dataset(-1, [work["records"]], "10,0,0", str(Path(work["folder"]) / f"data_{seed}"), 1,
                                 seed, tokenizer, cfg["max_seq_len"])[1]  # fmt: skip


def _held_out_loss(model, eval_set, batch_size: int) -> float:
    """Mean next-token loss over the held-out answers (log of sft_eval.perplexity)."""
    from ..sft_eval import perplexity

    return math.log(perplexity(model, eval_set, batch_size))


def run_ours(work: dict, variant: str, seed: int, device) -> dict:
    """`sft-lessons sft` (train_sft) on the shared records: LoRA on every Linear of the decoder layers."""
    from transformers import AutoModelForCausalLM

    from ..dschat import load_hf_tokenizer
    from ..models import quiet_from_pretrained
    from ..sft import parse_args, train_sft
    from ..timing import PeakMemory

    cfg = work["config"]
    gpu = device.type == "cuda"
    argv = ["--data_path", work["records"], "--data_output_path", str(Path(work["folder"]) / f"data_{seed}"),
            "--model_name_or_path", work["model"], "--per_device_train_batch_size", str(cfg["batch_size"]),
            "--per_device_eval_batch_size", str(cfg["eval_batch_size"]), "--max_seq_len", str(cfg["max_seq_len"]),
            "--lora_dim", str(cfg["lora_r"]), "--lora_scaling", str(cfg["lora_alpha"]), "--only_optimize_lora",
            "--lora_learning_rate", str(cfg["learning_rate"]), "--lr_scheduler_type", "cosine",
            "--num_warmup_steps", "0", "--weight_decay", "0", "--seed", str(seed), "--num_train_epochs", "1",
            "--dtype", "bf16" if gpu else "fp32"]  # fmt: skip
    if variant == "ours_grouped":
        argv.append("--group_by_length")
    elif variant == "ours_padding_free":
        argv += ["--padding", "none"]
    args = parse_args(argv)
    tokenizer = load_hf_tokenizer(work["model"])
    dtype = torch.bfloat16 if gpu else torch.float32
    model = quiet_from_pretrained(AutoModelForCausalLM, work["model"], dtype=dtype).to(device)
    with PeakMemory(device) as mem:
        result = train_sft(args, model=model, tokenizer=tokenizer, log=lambda *a, **k: None)
    return {
        "steps": [dict(loss=h["loss"], seconds=h["seconds"], tokens=h["tokens"]) for h in result.history],
        "held_out_loss_before": math.log(result.perplexity[0][1]),
        "held_out_loss": math.log(result.perplexity[-1][1]),
        "peak_mem_mb": mem.peak_bytes / 2**20,
        "trainable_params": result.trainable_params,
        "records": result.num_train,
        "batch_size": cfg["batch_size"],
    }


def packs_per_epoch(input_ids: list[list[int]], seq_len: int) -> int:
    """How many rows TRL's best-fit-decreasing packing makes of these records at `seq_len`."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    return len(pack_dataset(Dataset.from_dict({"input_ids": input_ids}), seq_len, strategy="bfd"))


def run_trl(work: dict, variant: str, seed: int, device) -> dict:
    """TRL's SFTTrainer on the same records as prompt-completion conversations (completion-only loss), peft LoRA."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ..dschat import get_raw_dataset, load_hf_tokenizer, record_messages
    from ..models import quiet_from_pretrained
    from ..timing import PeakMemory

    cfg = work["config"]
    gpu = device.type == "cuda"
    tokenizer = load_hf_tokenizer(work["model"])
    raw = get_raw_dataset(work["records"])
    messages = [record_messages(raw, r) for r in raw.get_train_data()]
    dataset = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in messages])
    batch_size, packs = cfg["batch_size"], None
    if variant == "trl_packing":  # rows of max_seq_len; as many per step as keep the steps at most the others
        ids = [tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"] for m in messages]
        packs = packs_per_epoch(ids, cfg["max_seq_len"])
        batch_size = math.ceil(packs / math.ceil(len(messages) / cfg["batch_size"]))
    config = SFTConfig(
        output_dir=str(Path(work["folder"]) / f"trl_{variant}_{seed}"), per_device_train_batch_size=batch_size,
        num_train_epochs=1, learning_rate=cfg["learning_rate"], lr_scheduler_type="cosine", warmup_steps=0,
        adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, seed=seed,
        bf16=gpu, gradient_checkpointing=False, use_cpu=not gpu,  # the same precision and memory trade as ours
        max_length=None if variant == "trl_padding_free" else cfg["max_seq_len"],  # records fit: nothing is cut
        packing=variant == "trl_packing", padding_free=variant == "trl_padding_free",
        train_sampling_strategy="group_by_length" if variant == "trl_grouped" else "random",
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, dataset_num_proc=None,
    )  # fmt: skip
    model = quiet_from_pretrained(AutoModelForCausalLM, work["model"], dtype=torch.float32).to(device)
    lora = LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    tokens, ends = [], []

    def counting(rows):  # non-padding tokens of each batch, in the order the steps take them
        tokens.append(sum(len(r["input_ids"]) for r in rows))
        return collate(rows)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            ends.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    eval_set = _eval_set(work, tokenizer, seed)
    # the same window as ours: from the loaded model (LoRA, data, trainer set-up) to the trained, evaluated one
    with PeakMemory(device) as mem:
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)  # fmt: skip
        collate = trainer.data_collator
        trainer.data_collator = counting
        trainer.add_callback(Clock())
        before = _held_out_loss(trainer.model, eval_set, cfg["eval_batch_size"])
        trainer.train()
        after = _held_out_loss(trainer.model, eval_set, cfg["eval_batch_size"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    if not (len(losses) == len(seconds) == len(tokens)):
        raise RuntimeError(f"{len(losses)} losses, {len(seconds)} step times, {len(tokens)} batches: not one per step")
    return {
        "steps": [dict(loss=v, seconds=s, tokens=n) for v, s, n in zip(losses, seconds, tokens, strict=True)],
        "held_out_loss_before": before,
        "held_out_loss": after,
        "peak_mem_mb": mem.peak_bytes / 2**20,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "records": len(messages),
        "batch_size": batch_size,
        "packs": packs,  # packing: rows of max_seq_len the records were packed into
    }


def run_variant(work: dict, variant: str, seed: int) -> dict:
    """One variant in this process (the parent runs each in a fresh one): steps, losses, memory."""
    from ..device import get_device, setup_notebook

    setup_notebook(seed=seed)
    device = get_device()
    run = run_ours if variant in OURS else run_trl
    out = run(work, variant, seed, device)
    return {"variant": variant, "seed": seed, "device": str(device), **out}


def summarize(run: dict) -> dict:
    """s/step and tokens/s over the steps after the first (the first pays for one-time set-up), losses."""
    steps = run["steps"]
    timed = steps[1:] if len(steps) > 1 else steps
    seconds = sum(s["seconds"] for s in timed)
    return {
        "steps": len(steps),
        "sec_per_step": seconds / len(timed),
        "tokens_per_s": sum(s["tokens"] for s in timed) / seconds,
        "tokens": sum(s["tokens"] for s in steps),
        "train_loss": statistics.fmean(s["loss"] for s in steps),
        "held_out_loss": run["held_out_loss"],
        "held_out_loss_before": run["held_out_loss_before"],
        "peak_mem_mb": run["peak_mem_mb"],
        "trainable_params": run["trainable_params"],
        "rows_per_step": run["batch_size"],  # records per step; packing: packed rows of max_seq_len
        "packs": run.get("packs"),
    }


def _child(work_file: Path, variant: str, seed: int, out: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "sft_lessons.course.trl_compare", "--work", str(work_file), "--variant", variant,
           "--seed", str(seed), "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} (seed {seed}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def compare(cfg: TrlBenchConfig, model_path: Path, tokenizer, timeout: float = 900) -> dict:
    """Every variant in its own process, `rounds` times (round r: seed + r, order rotated by r); per-variant medians."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise ImportError("the trl section needs TRL: pip install -e '.[trl]'")
    import trl

    with tempfile.TemporaryDirectory(prefix="sft-trl-bench-") as tmp:
        folder = Path(tmp)
        work = prepare_work(cfg, folder, model_path, tokenizer)
        work_file = folder / "work.json"
        work_file.write_text(json.dumps(work))
        runs = {v: [] for v in cfg.variants}
        for r in range(cfg.rounds):
            order = cfg.variants[r % len(cfg.variants):] + cfg.variants[: r % len(cfg.variants)]
            for variant in order:
                run = _child(work_file, variant, cfg.seed + r, folder / f"{variant}_{r}.json", timeout)
                runs[variant].append(summarize(run))
    out = {"config": asdict(cfg), "trl": trl.__version__, "variants": {}}
    for variant, rows in runs.items():
        keys = ("sec_per_step", "tokens_per_s", "peak_mem_mb", "train_loss", "held_out_loss")
        row = {k: statistics.median(x[k] for x in rows) for k in keys}
        row.update(steps=rows[0]["steps"], tokens=rows[0]["tokens"], trainable_params=rows[0]["trainable_params"],
                   rows_per_step=rows[0]["rows_per_step"], packs=rows[0]["packs"],
                   held_out_loss_before=rows[0]["held_out_loss_before"], rounds=rows)  # fmt: skip
        out["variants"][variant] = row
    out.update(verdict(out["variants"]))
    return out


def verdict(rows: dict) -> dict:
    """The fastest of ours and of TRL's (tokens/s), their ratio, and their held-out losses paired by round."""
    ours = [v for v in rows if v in OURS]
    theirs = [v for v in rows if v not in OURS]
    if not ours or not theirs:
        return {}
    best_ours = max(ours, key=lambda v: rows[v]["tokens_per_s"])
    best_trl = max(theirs, key=lambda v: rows[v]["tokens_per_s"])
    pairs = zip(rows[best_ours]["rounds"], rows[best_trl]["rounds"], strict=True)
    diffs = [a["held_out_loss"] - b["held_out_loss"] for a, b in pairs]
    pairs = {}
    for name, (a, b) in PAIRS.items():  # the same batching: only the trainer differs
        if a in rows and b in rows:
            per_round = [x["tokens_per_s"] / y["tokens_per_s"]
                         for x, y in zip(rows[a]["rounds"], rows[b]["rounds"], strict=True)]  # fmt: skip
            pairs[name] = {"ours_over_trl_tokens_per_s": rows[a]["tokens_per_s"] / rows[b]["tokens_per_s"],
                           "per_round": per_round}  # fmt: skip
    return {
        "best_ours": best_ours,
        "best_trl": best_trl,
        "ours_over_trl_tokens_per_s": rows[best_ours]["tokens_per_s"] / rows[best_trl]["tokens_per_s"],
        "held_out_loss_diff": statistics.fmean(diffs),  # ours - TRL, round by round (same seed number, own streams)
        "held_out_loss_diffs": diffs,
        "pairs": pairs,
    }


def _spread(row: dict, key: str, fmt: str) -> str:
    """'median (lowest-highest over the rounds)', or the one value of a single round."""
    values = [r[key] for r in row["rounds"]]
    mid = format(statistics.median(values), fmt)
    return mid if len(values) == 1 else f"{mid} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def markdown_table(result: dict) -> str:
    """The comparison as a markdown table: medians over the rounds, with their range."""
    lines = ["| variant | steps | rows/step | s/step | tokens/s | peak mem (MiB) | train loss | held-out loss |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['steps']} | {r['rows_per_step']} | {_spread(r, 'sec_per_step', '.2f')} | "
                     f"{_spread(r, 'tokens_per_s', '.0f')} | {_spread(r, 'peak_mem_mb', '.0f')} | "
                     f"{_spread(r, 'train_loss', '.3f')} | {_spread(r, 'held_out_loss', '.3f')} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    """Child process: run one variant and write its JSON."""
    p = argparse.ArgumentParser(prog="python -m sft_lessons.course.trl_compare")
    p.add_argument("--work", required=True)
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = json.loads(Path(args.work).read_text())
    result = run_variant(work, args.variant, args.seed)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
