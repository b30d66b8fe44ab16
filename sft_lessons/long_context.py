"""The toy context-extension experiment, a passkey probe and forward timing (第 5 章, notebooks/05_context_extension.ipynb).

Copy and passkey data, a tiny Llama (RoPE or ALiBi), training, per-example scoring, where the copied token comes
from, every layer-0 attention logit by distance, and for the real model a passkey-retrieval probe and forward timing.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats as sps
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import repeat_kv

from .data import IGNORE_INDEX
from .device import progress
from .rope import alibi_bias, rope_parameters_for, rotate_half
from .stats import Proportion, over_seeds
from .timing import CLOCKS, interleaved_times


@dataclass(frozen=True)
class LongRangeTask:
    """Two synthetic tasks that need the whole window; `passkey_share` of every batch is passkey, the rest copy.

    copy:    L/2 random tokens, then the same L/2 tokens again; every copied token is L/2 positions back.
    passkey: random filler with one passkey token hidden at a random depth; QUERY at L-2, the passkey at L-1.
    Tokens: 0..num_tokens-1 filler/copy tokens, then num_values passkey tokens, then QUERY.
    """

    num_tokens: int = 64
    num_values: int = 16
    passkey_share: float = 0.5

    @property
    def query_id(self) -> int:
        return self.num_tokens + self.num_values

    @property
    def vocab_size(self) -> int:
        return self.query_id + 1

    def batch(self, batch_size: int, seq_len: int, generator):
        """(input_ids, labels, is_passkey): (B, L), (B, L) with -100 where nothing is scored, (B,) bool."""
        if seq_len % 2 or seq_len < 8:
            raise ValueError(f"seq_len must be even and >= 8, got {seq_len!r}")
        if not 0 <= self.passkey_share <= 1:
            raise ValueError(f"passkey_share must be in [0, 1], got {self.passkey_share!r}")
        n_key = round(batch_size * self.passkey_share)
        n_copy, half = batch_size - n_key, seq_len // 2
        first = torch.randint(0, self.num_tokens, (n_copy, half), generator=generator)
        copy_ids = torch.cat([first, first], dim=1)  # (n_copy, L)
        copy_labels = torch.full_like(copy_ids, IGNORE_INDEX)
        copy_labels[:, half + 1 :] = copy_ids[:, half + 1 :]  # the first copied token is not predictable
        key_ids = torch.randint(0, self.num_tokens, (n_key, seq_len), generator=generator)  # filler
        values = self.num_tokens + torch.randint(0, self.num_values, (n_key,), generator=generator)
        depth = torch.randint(0, seq_len - 2, (n_key,), generator=generator)
        key_ids[torch.arange(n_key), depth] = values
        key_ids[:, -2], key_ids[:, -1] = self.query_id, values
        key_labels = torch.full_like(key_ids, IGNORE_INDEX)
        key_labels[:, -1] = values
        is_passkey = torch.arange(batch_size) >= n_copy
        return torch.cat([copy_ids, key_ids]), torch.cat([copy_labels, key_labels]), is_passkey


def task_losses(logits, labels, is_passkey):
    """{"copy_loss", "copy_acc", "passkey_loss", "passkey_acc"} (tensors) from (B, L, V) logits; kinds present only."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]  # position t predicts token t+1
    out = {}
    for name, rows in (("copy", ~is_passkey), ("passkey", is_passkey)):
        if not rows.any():
            continue
        lg, lb = logits[rows], labels[rows]
        scored = lb != IGNORE_INDEX
        out[f"{name}_loss"] = F.cross_entropy(lg[scored], lb[scored])
        out[f"{name}_acc"] = (lg[scored].argmax(-1) == lb[scored]).float().mean()
    return out


@dataclass(frozen=True)
class TinyLlamaConfig:
    """The toy model: a 2-layer Llama trained from scratch at train_len tokens (head_dim 16: 8 RoPE pairs)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    rope_theta: float = 10_000.0
    train_len: int = 64

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# ---- models ----


class NoRotary:
    """Stands in for LlamaRotaryEmbedding in the ALiBi model: cos = 1, sin = 0, so queries and keys are not turned."""

    def __new__(cls, head_dim: int):
        class _NoRotary(torch.nn.Module):
            def forward(self, x, position_ids):
                shape = (*position_ids.shape, head_dim)  # (B, T, head_dim)
                return torch.ones(shape, dtype=x.dtype, device=x.device), torch.zeros(
                    shape, dtype=x.dtype, device=x.device
                )

        return _NoRotary()


def alibi_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Custom attention for transformers' Llama: softmax(q k^T * scaling + ALiBi bias) v (causal, no padding)."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    heads, q_len, k_len = query.shape[1], query.shape[2], key.shape[2]
    scores = query @ key.transpose(2, 3) * scaling  # (B, H, q, k)
    scores = scores + alibi_bias(heads, q_len, k_len).to(scores)  # causal mask included
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        scores = scores + attention_mask
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    out = probs @ value  # (B, H, q, head_dim)
    return out.transpose(1, 2).contiguous(), probs


def _register_alibi() -> str:
    AttentionInterface.register("alibi", alibi_attention)
    return "alibi"


def build_tiny_llama(
    task: LongRangeTask,
    cfg: TinyLlamaConfig = TinyLlamaConfig(),
    method: str = "none",
    factor: float = 1.0,
    alibi: bool = False,
    seed: int = 0,
):
    """A random-init LlamaForCausalLM; RoPE scaled by (method, factor), or ALiBi (custom attention, no RoPE)."""
    rope_parameters, max_pos = rope_parameters_for(method, factor, cfg.rope_theta, cfg.train_len)
    config = LlamaConfig(
        vocab_size=task.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    config._attn_implementation = _register_alibi() if alibi else "sdpa"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if alibi:
        model.model.rotary_emb = NoRotary(cfg.head_dim)
    return model


def rescale_rope(model, method: str, factor: float, train_len: int):
    """A copy of a trained RoPE model rebuilt with a new rope scaling (config first, then the trained weights)."""
    config = copy.deepcopy(model.config)
    theta = config.rope_parameters["rope_theta"]
    config.rope_parameters, config.max_position_embeddings = rope_parameters_for(
        method, factor, theta, train_len
    )
    config.validate_rope()
    new = LlamaForCausalLM(config)
    new.load_state_dict(model.state_dict())  # inv_freq is a non-persistent buffer: it stays the new one
    return new.to(model.device).eval()


# ---- training and evaluation ----


def train(
    model,
    task: LongRangeTask,
    steps: int,
    seq_len: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    warmup: int = 20,
    seed: int = 0,
    eval_every: int = 0,
    eval_batch_size: int = 64,
):
    """AdamW, warmup + cosine; loss = copy loss + passkey loss. Returns {"loss": [...], "eval": [(step, metrics)]}."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    history = {"loss": [], "eval": []}

    for step in progress(range(steps + 1), "train"):
        if eval_every and (step % eval_every == 0 or step == steps):
            history["eval"].append((step, evaluate(model, task, seq_len, eval_batch_size)))
        if step == steps:
            break
        model.train()
        ids, labels, is_passkey = (t.to(device) for t in task.batch(batch_size, seq_len, generator))
        losses = task_losses(model(input_ids=ids).logits, labels, is_passkey)
        # one passkey per sequence vs ~L/2 copied tokens: the two means are weighed equally
        loss = sum(v for k, v in losses.items() if k.endswith("_loss"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule.step()
        history["loss"].append(loss.item())
    model.eval()
    return history


def evaluate(model, task: LongRangeTask, seq_len: int, batch_size: int = 64, seed: int = 1234):
    """{"copy_loss", "copy_acc", "passkey_loss", "passkey_acc"} on one fixed batch (the same for every model)."""
    device = next(model.parameters()).device
    ids, labels, is_passkey = task.batch(batch_size, seq_len, torch.Generator().manual_seed(seed + seq_len))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids.to(device)).logits
    model.train(was_training)
    return {k: v.item() for k, v in task_losses(logits, labels.to(device), is_passkey.to(device)).items()}


def score_examples(
    model, task: LongRangeTask, seq_len: int, n_copy: int = 64, n_passkey: int = 256, seed: int = 1234,
    batch_size: int = 64,
):  # fmt: skip
    """Per-example results on a fixed set: copy_correct (n_copy, L/2-1) bool, passkey_correct (n_passkey,) bool, mean losses."""
    device = next(model.parameters()).device
    kinds = {"copy": (n_copy, 0.0), "passkey": (n_passkey, 1.0)}
    out = {}
    model.eval()
    for offset, (name, (n, share)) in enumerate(kinds.items()):
        if n == 0:
            continue
        gen = torch.Generator().manual_seed(seed + seq_len + offset)  # the same examples for every model
        ids, labels, _ = replace(task, passkey_share=share).batch(n, seq_len, gen)
        correct, losses, predictions = [], [], []
        for start in range(0, n, batch_size):
            ids_b, lab_b = ids[start : start + batch_size].to(device), labels[start : start + batch_size].to(device)
            with torch.no_grad():
                logits = model(input_ids=ids_b).logits[:, :-1].float()  # position t predicts token t+1
            lab_b = lab_b[:, 1:]
            scored = lab_b != IGNORE_INDEX
            losses.append(F.cross_entropy(logits[scored], lab_b[scored], reduction="sum").item())
            pred = logits.argmax(-1)  # (b, L-1)
            correct.append((pred == lab_b)[scored].view(len(lab_b), -1).cpu())  # (b, scored per row)
            predictions.append(pred[scored].view(len(lab_b), -1).cpu())
        out[f"{name}_correct"] = torch.cat(correct).squeeze(-1) if name == "passkey" else torch.cat(correct)
        out[f"{name}_loss"] = sum(losses) / out[f"{name}_correct"].numel()
        if name == "copy":
            out["copy_ids"], out["copy_pred"] = ids, torch.cat(predictions)
    return out


def copy_accuracy(copy_correct, seed: int = 0) -> Proportion:
    """Token accuracy of (n_seq, tokens) copy flags, with a 95 % bootstrap interval that resamples whole sequences."""
    flags = copy_correct.float().numpy()  # tokens of one sequence are not independent: resample sequences
    per_seq = flags.mean(1)
    if per_seq.min() == per_seq.max():
        low = high = float(per_seq[0])
    else:
        ci = sps.bootstrap((per_seq,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(seed))
        low, high = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
    return Proportion(int(flags.sum()), flags.size, low, high)


def mean_sd_table(values: dict, digits: int = 3) -> pd.DataFrame:
    """{(row, column): [one value per seed]} -> DataFrame of 'mean ± sd' strings (rows x columns; '' where missing)."""
    cells = {key: f"{s.mean:.{digits}f} ± {s.sd:.{digits}f}" for key, s in
             ((key, over_seeds(v)) for key, v in values.items())}  # fmt: skip
    rows, cols = dict.fromkeys(k[0] for k in cells), dict.fromkeys(k[1] for k in cells)
    return pd.DataFrame({c: {r: cells.get((r, c), "") for r in rows} for c in cols})


def copy_source_profile(copy_ids, copy_pred):
    """(n, L) copy inputs, (n, L/2-1) predictions -> (L/2+1,) share of predictions equal to the token k back, k=0..L/2.

    The right answer is k = L/2 (and k = 0, the target itself); a model that learned a fixed offset peaks elsewhere.
    """
    seq_len = copy_ids.shape[1]
    half = seq_len // 2
    targets = torch.arange(half + 1, seq_len)  # positions of the scored tokens
    return torch.stack(
        [(copy_pred == copy_ids[:, targets - k]).float().mean() for k in range(half + 1)]
    )  # fmt: skip


# ---- the mechanism: layer-0 attention logits by relative distance ----


def first_layer_logits(model, seq_len: int):
    """(seq_len, heads, V, V) layer-0 logits q_a . k_b / sqrt(head_dim) for every query token a, key token b, distance.

    Layer 0 sees only token embeddings, so its logit depends on the two tokens and their distance alone: this
    table holds every value layer 0 can produce at these distances, not a sample. Uses the model's own rotary
    embedding (scaled frequencies, dynamic update and YaRN's cos/sin factor included).
    """
    attn, emb = model.model.layers[0].self_attn, model.model.embed_tokens.weight
    with torch.no_grad():
        h = model.model.layers[0].input_layernorm(emb)  # (V, hidden)
        q = attn.q_proj(h).view(len(h), -1, attn.head_dim).transpose(0, 1)  # (H, V, hd)
        k = attn.k_proj(h).view(len(h), -1, attn.head_dim).transpose(0, 1)  # (H_kv, V, hd)
        k = repeat_kv(k[None], attn.num_key_value_groups)[0]  # (H, V, hd)
        cos, sin = model.model.rotary_emb(h[None], torch.arange(seq_len, device=h.device)[None])  # (1, T, hd)
        cos, sin = cos[0, :, None, None], sin[0, :, None, None]  # (T, 1, 1, hd)
        q_at_d = q * cos + rotate_half(q) * sin  # (T, H, V, hd): the query at position d
        k_at_0 = k * cos[0] + rotate_half(k) * sin[0]  # (H, V, hd): the key at position 0
        return q_at_d @ k_at_0.transpose(-1, -2) * attn.scaling  # (T, H, V, V)


# ---- the real model: passkey retrieval and forward timing ----

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_prompt(tokenizer, n_tokens: int, passkey: str, depth: float = 0.5) -> str:
    """About n_tokens of filler with "The pass key is <passkey>." hidden at `depth` (0 = start, 1 = end)."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    head = "There is a pass key hidden in a lot of irrelevant text. Find it and memorize it.\n"
    needle = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    tail = "\nWhat is the pass key? The pass key is"
    fixed = len(tokenizer(head + needle + tail)["input_ids"])
    per_filler = len(tokenizer(FILLER)["input_ids"])
    n_filler = max(0, (n_tokens - fixed) // per_filler)
    before = round(n_filler * depth)
    return head + FILLER * before + needle + FILLER * (n_filler - before) + tail


def passkey_probe(model, tokenizer, lengths, depths=(0.2, 0.8), seed: int = 0, max_new_tokens: int = 7):
    """Rows {"length", "depth", "tokens", "passkey", "answer", "correct"}: greedy completion after the question."""
    rng = random.Random(seed)
    rows = []
    for length in lengths:
        for depth in depths:
            passkey = str(rng.randint(10_000, 99_999))
            batch = tokenizer(passkey_prompt(tokenizer, length, passkey, depth), return_tensors="pt").to(
                model.device
            )
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            answer = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            rows.append(
                {
                    "length": length,
                    "depth": depth,
                    "tokens": batch["input_ids"].shape[1],
                    "passkey": passkey,
                    "answer": answer,
                    "correct": passkey in answer,
                }
            )
    return rows


def time_forward(model, lengths, repeats: int = 1, clock: str = "wall"):
    """{length: seconds} for one no-grad forward over a random sequence (best of repeats, lengths interleaved).

    clock="wall" measures elapsed time; clock="cpu" measures this thread's CPU time, which on a one-thread CPU run
    does not grow when other processes share the machine.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    gen = torch.Generator().manual_seed(0)
    batches = {n: torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(model.device) for n in lengths}

    def forward(ids):
        with torch.no_grad():
            model(input_ids=ids, logits_to_keep=1)

    fns = {n: (lambda ids=ids: forward(ids)) for n, ids in batches.items()}
    times = interleaved_times(fns, repeats, warmup=0, device=model.device, clock=clock)
    return {n: min(ts) for n, ts in times.items()}


def fit_forward_cost(times: dict):
    """(a, b) >= 0 of the least-squares fit seconds ~ a * n + b * n^2 (linear layers + attention)."""
    n = np.array(sorted(times), dtype=float)
    t = np.array([times[int(k)] for k in n])
    (a, b), *_ = np.linalg.lstsq(np.stack([n, n**2], axis=1), t, rcond=None)
    if a < 0 or b < 0:  # noisy timings: keep the one term that fits on its own with a positive coefficient
        a, b = (0.0, float(t @ n**2 / (n**2 @ n**2))) if a < 0 else (float(t @ n / (n @ n)), 0.0)
    return float(a), float(b)
