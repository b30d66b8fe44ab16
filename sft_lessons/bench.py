"""`sft-lessons bench`: the course's own speed and memory, measured side by side in one process, as ratios."""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
        default_factory=lambda: ["train", "gemm", "inference", "icl", "sft_data", "load"]
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() after warmup."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled process RSS above the start on CPU."""

    def __init__(self, device):
        self.device, self.peak_bytes, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss() - self._start)

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            self._start = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
        return False


def _base_model(cfg: BenchConfig, device):
    """(model, tokenizer, checkpoint dir) — SmolLM2-135M, or a tiny random Llama saved to a temp dir for --quick."""
    import tempfile

    from .models import load_causal_lm, tiny_causal_lm, tiny_tokenizer

    if cfg.quick:
        path = Path(tempfile.mkdtemp(prefix="sft-bench-"))
        model, tok = (
            tiny_causal_lm("llama", hidden_size=128, intermediate_size=256, num_hidden_layers=2),
            tiny_tokenizer(),
        )
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return model.to(device), tok, path
    from .assets import fetch

    model, tok = load_causal_lm(device=device)
    return model, tok, fetch("smollm2-135m-instruct")


def _batch(cfg: BenchConfig, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (cfg.batch_size, cfg.seq_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": ids.to(device),
    }


def _variants(base, path, cfg: BenchConfig, device) -> dict:
    """The four training set-ups on the same base weights: full, peft LoRA, our LoRA, QLoRA (bitsandbytes NF4)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .lora import convert_linear_layer_to_lora, only_optimize_lora_parameters

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
    q = prepare_model_for_kbit_training(q, use_gradient_checkpointing=False)
    out["qlora"] = get_peft_model(q, lora).train()
    if cfg.compile and device.type == "cuda":
        out = {name: torch.compile(m) for name, m in out.items()}
    return out


def _optimizer_state_bytes(opt) -> int:
    import torch

    return sum(
        t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
    )


def bench_train(cfg: BenchConfig, base, path, device) -> dict:
    """Seconds/step (median, interleaved across variants), tokens/s, peak memory, trainable params, optimizer bytes."""
    import torch

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
                _sync(device)
                start = time.perf_counter()
                step(name)
                _sync(device)
                seconds = time.perf_counter() - start
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
            "trainable_params": sum(p.numel() for p in m.parameters() if p.requires_grad),
            "optimizer_state_mb": _optimizer_state_bytes(opts[name]) / 2**20,
        }
    return result


def bench_gemm(device, quick: bool) -> dict:
    """The device's own matmul throughput: fp32 on CPU, bf16 on GPU (FLOP/s)."""
    import torch

    n = 512 if quick else (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = _median_time(lambda: a @ b, device, repeats=5, warmup=2)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / sec}


def bench_inference(cfg: BenchConfig, base, tok, device) -> dict:
    """Greedy generation tokens/s: base, peft LoRA unmerged, and merged (merge_and_unload)."""
    import torch
    from peft import LoraConfig, get_peft_model

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
    times = {n: [] for n in models}
    with torch.no_grad():
        for i in range(1 + (3 if cfg.quick else 5)):  # interleaved, first round is warm-up
            for name, m in models.items():
                _sync(device)
                start = time.perf_counter()
                m.generate(**prompt, **kwargs)
                _sync(device)
                if i:
                    times[name].append(time.perf_counter() - start)
    return {n: {"tokens_per_s": cfg.gen_tokens / statistics.median(t)} for n, t in times.items()}


def bench_icl(base, tok, device, quick: bool) -> dict:
    """k = 8 in-context classification: the prefix-KV-cache path against the naive path (same predictions)."""
    from .icl import compare_prefix_cache

    return compare_prefix_cache(base, tok, k=8, n_queries=8 if quick else 32, device=device)


def bench_sft_data(cfg: BenchConfig, base, tok) -> dict:
    """SFT batches padded to max_seq_len (DeepSpeed-Chat) against dynamic padding: padding fraction and tokens/s."""
    from .padding import compare_padding

    # the tiny tokenizer is nearly byte-level: 384 (chapter 7's --test_mode) keeps most records, as 256 does SmolLM2's
    max_seq_len = 384 if cfg.quick else 256
    return compare_padding(tok, max_seq_len, quick=cfg.quick, model=base, batch_size=cfg.batch_size)


def bench_load(quick: bool) -> dict:
    """Cached load time of SmolLM2 against its first fetch + conversion (recorded in the cache manifest)."""
    from .assets import asset_dir
    from .models import load_causal_lm

    if quick:
        return {"skipped": "quick mode"}
    start = time.perf_counter()
    load_causal_lm(device="cpu")
    cached = time.perf_counter() - start
    manifest = json.loads((asset_dir("smollm2-135m-instruct") / "sft_lessons_manifest.json").read_text())
    first = manifest.get("build_seconds")
    return {"cached_load_s": cached, "first_fetch_convert_s": first}


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
    if result.get("load", {}).get("first_fetch_convert_s"):
        out["first_convert_over_cached_load"] = (
            result["load"]["first_fetch_convert_s"] / result["load"]["cached_load_s"]
        )
    return out


def run_bench(cfg: BenchConfig, device=None) -> dict:
    """Run every section in one process on one device; returns the JSON-ready result."""
    import torch

    from .device import get_device, setup_notebook

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
        "n_params": sum(p.numel() for p in base.parameters()),
    }
    sections = {
        "train": lambda: bench_train(cfg, base, path, device),
        "gemm": lambda: bench_gemm(device, cfg.quick),
        "inference": lambda: bench_inference(cfg, base, tok, device),
        "icl": lambda: bench_icl(base, tok, device, cfg.quick),
        "sft_data": lambda: bench_sft_data(cfg, base, tok),
        "load": lambda: bench_load(cfg.quick),
    }
    for name in cfg.sections:
        start = time.perf_counter()
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
