"""`sft-lessons bench`: the course's own speed and memory, measured side by side in one process, as ratios."""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from ..assets import asset_dir, fetch
from ..data import IGNORE_INDEX
from ..device import get_device, setup_notebook
from ..dschat import build_sft_example, get_raw_dataset
from ..icl import compare_prefix_cache
from ..lora import convert_linear_layer_to_lora, only_optimize_lora_parameters
from ..memory import count_parameters, optimizer_state_bytes
from ..models import load_causal_lm, tiny_causal_lm, tiny_tokenizer
from ..padding import LengthGroupedBatches, trim_padding
from ..quant import keep_4bit_weights_unpacked
from ..timing import PeakMemory, gemm_flops_per_s, interleaved_times, timed_call

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # LoRA on attention, the same for peft and ours


@dataclass
class BenchConfig:
    """What to measure; the defaults fit a 2-core CPU in a few minutes, `quick` uses a tiny random model."""

    quick: bool = False
    batch_size: int = 4
    seq_len: int = 128
    steps: int = 3  # measured steps per variant (median), after `warmup`
    warmup: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    gen_tokens: int = 32
    compile: bool = False  # GPU: torch.compile the models
    sections: list[str] = field(
        default_factory=lambda: ["train", "gemm", "inference", "icl", "sft_data", "load", "trl"]
    )

    @classmethod
    def preset(cls, quick=False, compile=False, steps=None, sections=None) -> BenchConfig:
        """The full bench, or with quick=True the tiny-model preset (64 tokens, 2 steps) that CI runs."""
        cfg = cls(quick=quick, compile=compile)
        if quick:
            cfg.seq_len, cfg.gen_tokens, cfg.steps = 64, 16, 2
        if steps:
            cfg.steps = steps
        if sections:
            unknown = sorted(set(sections) - set(cfg.sections))
            if unknown:
                raise ValueError(f"unknown bench sections {unknown}; valid: {', '.join(cfg.sections)}")
            cfg.sections = list(sections)
        return cfg


def _base_model(cfg: BenchConfig, device):
    """(model, tokenizer, checkpoint dir) — SmolLM2-135M, or a tiny random Llama saved to a temp dir for --quick."""
    if cfg.quick:
        path = Path(tempfile.mkdtemp(prefix="sft-bench-"))
        model, tok = (
            tiny_causal_lm("llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2),
            tiny_tokenizer(),
        )
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return model.to(device), tok, path

    model, tok = load_causal_lm(device=device)
    return model, tok, fetch("smollm2-135m-instruct")


def _batch(cfg: BenchConfig, vocab: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (cfg.batch_size, cfg.seq_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": ids.to(device),
    }


def _variants(base, path, cfg: BenchConfig, device) -> dict:
    """The four training set-ups on the same base weights: full, peft LoRA, our LoRA, QLoRA (bitsandbytes NF4)."""
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=TARGETS)
    out = {"full": copy.deepcopy(base).train()}
    out["peft_lora"] = get_peft_model(copy.deepcopy(base), lora).train()
    ours = convert_linear_layer_to_lora(
        copy.deepcopy(base), TARGETS, lora_dim=cfg.lora_r, lora_scaling=cfg.lora_alpha
    )
    out["our_lora"] = only_optimize_lora_parameters(ours).train()
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
    )
    q = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, device_map={"": device})
    keep_4bit_weights_unpacked(q)  # an evaluation pass would otherwise cut the backward on some CPUs
    q = prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)
    out["qlora"] = get_peft_model(q, lora).train()
    if cfg.compile and device.type == "cuda":
        out = {name: torch.compile(m) for name, m in out.items()}
    return out


def bench_train(cfg: BenchConfig, base, path, device) -> dict:
    """Seconds/step (median, interleaved across variants), tokens/s, peak memory, trainable params, optimizer bytes."""
    models = _variants(base, path, cfg, device)
    batch = _batch(cfg, base.config.vocab_size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    opts, times, peaks = {}, {n: [] for n in models}, {n: 0 for n in models}
    for name, m in models.items():
        params = [p for p in m.parameters() if p.requires_grad]
        opts[name] = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")

    def step(name):
        m, opt = models[name], opts[name]
        if autocast is not None:
            with autocast:
                loss = m(**batch).loss
        else:
            loss = m(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(cfg.warmup + cfg.steps):  # interleaved rounds: A B C D A B C D ...
        for name in models:
            with PeakMemory(device) as mem:
                seconds, _ = timed_call(lambda name=name: step(name), device)
            peaks[name] = max(peaks[name], mem.peak_bytes)
            if i >= cfg.warmup:
                times[name].append(seconds)
    tokens = cfg.batch_size * cfg.seq_len
    result = {}
    for name, m in models.items():
        sec = statistics.median(times[name])
        result[name] = {
            "sec_per_step": sec,
            "tokens_per_s": tokens / sec,
            "peak_mem_mb": peaks[name] / 2**20,
            "trainable_params": count_parameters(m),
            "optimizer_state_mb": optimizer_state_bytes(opts[name]) / 2**20,
        }
    return result


def bench_gemm(device, quick: bool) -> dict:
    """The device's own matmul throughput: fp32 on CPU, bf16 on GPU (FLOP/s)."""
    return gemm_flops_per_s(device, n=512 if quick else None)


def bench_inference(cfg: BenchConfig, base, tok, device) -> dict:
    """Greedy generation tokens/s: base, peft LoRA unmerged, and merged (merge_and_unload)."""
    lora = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=TARGETS, init_lora_weights=False),
    )
    merged = copy.deepcopy(lora).merge_and_unload()
    prompt = tok("The movie was", return_tensors="pt").to(device)
    kwargs = dict(
        max_new_tokens=cfg.gen_tokens,
        min_new_tokens=cfg.gen_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    models = {"base": base.eval(), "lora_unmerged": lora.eval(), "lora_merged": merged.eval()}
    fns = {name: (lambda m=m: m.generate(**prompt, **kwargs)) for name, m in models.items()}
    with torch.no_grad():
        times = interleaved_times(fns, repeats=3 if cfg.quick else 5, warmup=1, device=device)
    return {n: {"tokens_per_s": cfg.gen_tokens / statistics.median(t)} for n, t in times.items()}


def bench_icl(base, tok, device, quick: bool) -> dict:
    """k = 8 in-context classification: the prefix-KV-cache path against the naive path (same predictions)."""
    return compare_prefix_cache(base, tok, k=8, n_queries=8 if quick else 32, device=device)


def bench_sft_data(cfg: BenchConfig, base, tok) -> dict:
    """SFT batches padded to max_seq_len (DeepSpeed-Chat) against dynamic padding: padding fraction and tokens/s."""
    # the tiny tokenizer is nearly byte-level: 384 (chapter 7's --test_mode) keeps most records, as 256 does SmolLM2's
    max_seq_len = 384 if cfg.quick else 256
    return compare_padding(tok, max_seq_len, quick=cfg.quick, model=base, batch_size=cfg.batch_size)


def bench_load(quick: bool) -> dict:
    """Cached load time of SmolLM2 against its first fetch + conversion (recorded in the cache manifest)."""
    if quick:
        return {"skipped": "quick mode"}
    cached, _ = timed_call(lambda: load_causal_lm(device="cpu"))
    manifest = json.loads((asset_dir("smollm2-135m-instruct") / "sft_lessons_manifest.json").read_text())
    first = manifest.get("build_seconds")
    return {"cached_load_s": cached, "first_fetch_convert_s": first}


PADDING_SCHEMES = ("max_length", "longest", "longest_grouped")


def compare_padding(
    tokenizer, max_seq_len: int = 256, quick: bool = False, model=None, batch_size: int = 8,
    n_batches: int | None = None, seed: int = 0,
) -> dict:  # fmt: skip
    """Padding fraction and training tokens/s of three batchings of chapter 7's SFT records, same loss.

    max_length: DeepSpeed-Chat's rows padded to max_seq_len; longest: each batch cut to its longest row
    (`trim_padding`); longest_grouped: the same, with batches of similar length (`LengthGroupedBatches`).
    Timed: forward + backward (fp32, dropout off) of `model` (default: a tiny random Llama for `tokenizer`)
    on the same `n_batches * batch_size` seeded records per scheme, interleaved, after one warm-up batch.
    """
    n_batches = n_batches or (4 if quick else 2)
    if batch_size < 1 or n_batches < 1:
        raise ValueError(f"batch_size={batch_size}, n_batches={n_batches}; valid: >= 1 each")
    if model is None:
        model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's embeddings")
    records = get_raw_dataset("local/hh_sft").get_train_data()
    eot = [tokenizer.eos_token_id]
    built = (build_sft_example(tokenizer, r["prompt"], r["chosen"], max_seq_len, eot) for r in records)
    examples = [e for e in built if e is not None]
    need = batch_size * n_batches
    if len(examples) < need:
        raise ValueError(f"max_seq_len={max_seq_len} keeps {len(examples)} of {len(records)} records; "
                         f"batch_size * n_batches = {need} needed")  # fmt: skip
    lengths = [int(e["attention_mask"].sum()) for e in examples]
    order = np.random.RandomState(seed).permutation(len(examples)).tolist()

    def chunks(idx):
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    def grouped(idx):  # LengthGroupedBatches over the records idx, mapped back to their indices
        sampler = LengthGroupedBatches([lengths[i] for i in idx], batch_size, seed)
        return [[idx[j] for j in b] for b in sampler]

    def padding_fraction(batches, scheme):  # pad tokens / all tokens the model runs on
        def width(b):
            return max_seq_len if scheme == "max_length" else max(lengths[i] for i in b)

        return 1 - sum(lengths[i] for b in batches for i in b) / sum(len(b) * width(b) for b in batches)

    epoch = {"max_length": chunks(order), "longest": chunks(order), "longest_grouped": grouped(order)}
    subset = order[:need]  # the timed records: the same for every scheme
    timed = {"max_length": chunks(subset), "longest": chunks(subset), "longest_grouped": grouped(subset)}
    device = next(model.parameters()).device
    keys = ("input_ids", "attention_mask", "labels")

    def batch(idx, scheme):
        b = {k: torch.stack([examples[i][k] for i in idx]) for k in keys}
        b = b if scheme == "max_length" else trim_padding(b)  # DeepSpeed-Chat keeps the padding columns
        return {k: v.to(device) for k, v in b.items()}

    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads, was_training = [p.grad for p in params], model.training

    def step(b) -> float:
        loss = model(**b, use_cache=False).loss
        loss.backward()
        for p in params:
            p.grad = None
        return loss.item()

    seconds = dict.fromkeys(PADDING_SCHEMES, 0.0)
    losses = {s: [] for s in PADDING_SCHEMES}  # (mean loss, number of target tokens) per batch
    model.eval()  # dropout off: the schemes must give the same loss
    try:
        step(batch(timed["longest"][0], "longest"))  # warm-up
        for i in range(n_batches):  # interleaved, so drifting machine load hits every scheme alike
            for scheme in PADDING_SCHEMES:
                b = batch(timed[scheme][i], scheme)
                took, loss = timed_call(lambda b=b: step(b), device)
                seconds[scheme] += took
                losses[scheme].append((loss, int((b["labels"][:, 1:] != IGNORE_INDEX).sum())))
    finally:
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
        model.train(was_training)
    # same batches: same mean loss per batch; regrouped batches: same token-weighted mean over all batches
    diffs = [abs(a - b) for (a, _), (b, _) in zip(losses["max_length"], losses["longest"], strict=True)]
    mean = {s: sum(v * n for v, n in losses[s]) / sum(n for _, n in losses[s]) for s in PADDING_SCHEMES}
    diffs.append(abs(mean["longest_grouped"] - mean["max_length"]))
    if max(diffs) > 1e-4:
        raise AssertionError(f"the masked loss depends on the padding: largest difference {max(diffs):.2e}")
    real = sum(lengths[i] for i in subset)
    out = {"max_seq_len": max_seq_len, "batch_size": batch_size, "n_batches": n_batches,
           "records": len(examples), "dropped": len(records) - len(examples)}  # fmt: skip
    for scheme in PADDING_SCHEMES:
        out[scheme] = {
            "padding_fraction": padding_fraction(timed[scheme], scheme),
            "epoch_padding_fraction": padding_fraction(epoch[scheme], scheme),
            "seconds": seconds[scheme],
            "tokens_per_s": real / seconds[scheme],
        }
    best = max(("longest", "longest_grouped"), key=lambda s: out[s]["tokens_per_s"])
    out.update(loss_equal=True, max_loss_diff=max(diffs), faster=best,
               speedup=out[best]["tokens_per_s"] / out["max_length"]["tokens_per_s"])  # fmt: skip
    return out


def bench_trl(cfg: BenchConfig, path, tok) -> dict:
    """`sft-lessons sft` against TRL's SFTTrainer on the same records and settings (see trl_compare)."""
    from .trl_compare import TrlBenchConfig, compare

    return compare(TrlBenchConfig.preset(quick=cfg.quick), Path(path), tok)


def ratios(result: dict) -> dict:
    """The headline ratios (each should be finite and positive)."""
    out = {}
    t = result.get("train", {})
    if t:
        out["lora_over_full_step"] = t["peft_lora"]["sec_per_step"] / t["full"]["sec_per_step"]
        out["ours_over_peft_step"] = t["our_lora"]["sec_per_step"] / t["peft_lora"]["sec_per_step"]
        out["qlora_over_lora_step"] = t["qlora"]["sec_per_step"] / t["peft_lora"]["sec_per_step"]
        out["qlora_over_lora_peak_mem"] = t["qlora"]["peak_mem_mb"] / max(t["peft_lora"]["peak_mem_mb"], 1e-9)
    if t and "gemm" in result:
        n_params = result["n_params"]
        achieved = 6 * n_params * result["config"]["batch_size"] * result["config"]["seq_len"]
        out["full_step_fraction_of_gemm_peak"] = (
            achieved / t["full"]["sec_per_step"] / result["gemm"]["flops_per_s"]
        )
    inf = result.get("inference", {})
    if inf:
        out["merged_over_base_tokens_per_s"] = (
            inf["lora_merged"]["tokens_per_s"] / inf["base"]["tokens_per_s"]
        )
        out["unmerged_over_base_tokens_per_s"] = (
            inf["lora_unmerged"]["tokens_per_s"] / inf["base"]["tokens_per_s"]
        )
    if "speedup" in result.get("icl", {}):
        out["icl_prefix_cache_speedup"] = result["icl"]["speedup"]
    if "speedup" in result.get("sft_data", {}):
        out["sft_dynamic_padding_speedup"] = result["sft_data"]["speedup"]
    if "ours_over_trl_tokens_per_s" in result.get("trl", {}):
        out["ours_over_trl_best_tokens_per_s"] = result["trl"]["ours_over_trl_tokens_per_s"]
    if result.get("load", {}).get("first_fetch_convert_s"):
        out["first_convert_over_cached_load"] = (
            result["load"]["first_fetch_convert_s"] / result["load"]["cached_load_s"]
        )
    return out


def run_bench(cfg: BenchConfig, device=None) -> dict:
    """Run every section in one process on one device; returns the JSON-ready result."""
    setup_notebook(seed=0)
    device = device or get_device()
    base, tok, path = _base_model(cfg, device)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "config": asdict(cfg),
        "model": "tiny random llama" if cfg.quick else "SmolLM2-135M-Instruct",
        "n_params": count_parameters(base, trainable_only=False),
    }
    sections = {
        "train": lambda: bench_train(cfg, base, path, device),
        "gemm": lambda: bench_gemm(device, cfg.quick),
        "inference": lambda: bench_inference(cfg, base, tok, device),
        "icl": lambda: bench_icl(base, tok, device, cfg.quick),
        "sft_data": lambda: bench_sft_data(cfg, base, tok),
        "load": lambda: bench_load(cfg.quick),
        "trl": lambda: bench_trl(cfg, path, tok),
    }
    for name in cfg.sections:
        start = time.perf_counter()  # a section's own length, for the reader: no sync needed at this scale
        try:
            result[name] = sections[name]()
        except ImportError as exc:  # a lesson module this section measures is not installed
            result[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
        result.setdefault("section_seconds", {})[name] = time.perf_counter() - start
    result["ratios"] = ratios(result)
    return result


def markdown_table(result: dict) -> str:
    """The result as markdown tables (training, ratios)."""
    lines = [
        f"device: {result['device']} ({result['machine']}), model: {result['model']}, "
        f"batch {result['config']['batch_size']}x{result['config']['seq_len']}, {result['date']}",
        "",
    ]
    if "sec_per_step" in next(iter(result.get("train", {}).values()), {}):
        lines += [
            "| variant | s/step | tokens/s | peak mem (MB) | trainable params | optimizer state (MB) |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in result["train"].items():
            lines.append(
                f"| {name} | {r['sec_per_step']:.3f} | {r['tokens_per_s']:.0f} | {r['peak_mem_mb']:.0f} | "
                f"{r['trainable_params']:,} | {r['optimizer_state_mb']:.1f} |"
            )
        lines.append("")
    if "variants" in result.get("trl", {}):
        from .trl_compare import markdown_table as trl_table

        c = result["trl"]["config"]
        lines += [f"`sft-lessons sft` vs TRL {result['trl']['trl']} SFTTrainer: {c['records']} records, batch "
                  f"{c['batch_size']}, max_seq_len {c['max_seq_len']}, LoRA r {c['lora_r']} alpha {c['lora_alpha']} "
                  f"on every linear layer, medians of {c['rounds']} rounds:", "", trl_table(result["trl"]), ""]  # fmt: skip
    lines += ["| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["ratios"].items()]
    skipped = [f"{k}: {v['skipped']}" for k, v in result.items() if isinstance(v, dict) and "skipped" in v]
    return "\n".join(lines + ([""] + [f"skipped {s}" for s in skipped] if skipped else []))


def plot(result: dict, path: Path) -> Path:
    """Bar chart of the ratios -> path (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: callable from a notebook without switching its backend

    names, values = zip(*result["ratios"].items(), strict=True) if result["ratios"] else ((), ())
    fig = Figure(figsize=(7, 0.45 * len(names) + 1))
    ax = fig.subplots()
    ax.barh(names, values, color="#4a86c5")
    ax.axvline(1.0, color="#444", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("ratio (log scale; 1 = parity)")
    ax.set_title(f"sft-lessons bench on {result['device']} ({result['model']})")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    return path


def check_result(result: dict) -> None:
    """Raise ValueError unless the schema holds and every ratio is finite and positive."""
    for key in ("date", "machine", "device", "config", "model", "n_params", "ratios"):
        if key not in result:
            raise ValueError(f"bench result lacks {key!r}")
    for name, value in result["ratios"].items():
        if not (isinstance(value, float) and math.isfinite(value) and value > 0):
            raise ValueError(f"ratio {name} = {value!r} is not finite and positive")


def main(quick=False, compile=False, steps=None, sections=None, out=None) -> int:
    """`sft-lessons bench`: run, check, write bench.json and bench.png into `out` (default build/), print the table."""
    from ..paths import build_dir

    result = run_bench(BenchConfig.preset(quick=quick, compile=compile, steps=steps, sections=sections))
    check_result(result)
    out = Path(out) if out else build_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "bench.png")
    print(markdown_table(result))
    print(f"\nwrote {out.name}/bench.json and {out.name}/bench.png")
    return 0
