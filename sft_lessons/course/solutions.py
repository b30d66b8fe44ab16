"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX


# ---- chapter 01: prompt learning ----
def calibrated_predictions(log_probs, content_free_log_probs):
    """(n, L) label log-probs, (L,) content-free log-probs -> (n,) calibrated predictions."""
    p = log_probs.log_softmax(-1)  # (n, L) renormalised over the labels
    p_cf = content_free_log_probs.log_softmax(-1)  # (L,)
    return (p - p_cf).argmax(-1)  # log of W p with W = diag(p_cf)^-1


def label_scores(token_log_probs, aggregate="sum"):
    """token_log_probs[label][word] = 1-D per-token log-probs -> (L,) label scores."""
    def word(lp):
        return lp.sum() if aggregate == "sum" else lp.mean()

    return torch.stack([torch.stack([word(lp) for lp in words]).logsumexp(0) for words in token_log_probs])


# ---- chapter 02: in-context learning ----
def sample_balanced_demos(pool, k, seed=0):
    """k (even) demonstrations from `pool` (a list of (text, label) pairs), k/2 per label, shuffled, seeded."""
    if k % 2:
        raise ValueError(f"k={k}: a balanced set over 2 labels needs an even k")
    rng = random.Random(seed)
    demos = []
    for label in (0, 1):
        demos += rng.sample([d for d in pool if d[1] == label], k // 2)
    rng.shuffle(demos)
    return demos


def my_icl_prompt(demos, query):
    """'Review: {x}\nSentiment: {word}\n\n' per demo, then 'Review: {query}\nSentiment:'."""
    words = {0: " negative", 1: " positive"}
    shots = "".join(f"Review: {x}\nSentiment:{words[y]}\n\n" for x, y in demos)
    return shots + f"Review: {query}\nSentiment:"


# ---- chapter 03: LoRA math ----
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, lora_A), lora_B)


def lora_num_params(d, k, r):
    """Trainable parameters of LoRA on one (d, k) weight at rank r."""
    return r * k + d * r  # A (r, k) + B (d, r)


def merge_lora(weight, lora_A, lora_B, scaling):
    """(d, k) merged weight W0 + scaling * B A; must not modify `weight`."""
    return weight + scaling * (lora_B @ lora_A)


# ---- chapter 04: LoRA variants ----
def nf4_dequantize_answer(codes, absmax, levels, blocksize, shape):
    """(n_padded,) uint8 codes, (n_blocks,) absmax, (16,) levels -> float32 tensor of `shape`."""
    values = levels[codes.long()].view(-1, blocksize)  # (n_blocks, blocksize) in [-1, 1]
    flat = (values * absmax.unsqueeze(1)).reshape(-1)
    n = 1
    for size in shape:
        n *= size
    return flat[:n].reshape(shape)


def lora_trainable_params(model, target_modules, r):
    """LoRA parameters peft would add for nn.Linear modules whose name ends with one of target_modules."""
    return sum(
        r * (module.in_features + module.out_features)  # A is r x in, B is out x r
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in target_modules
    )


# ---- chapter 05: context extension ----
def linear_pi_inv_freq(head_dim: int, theta: float, factor: float):
    """(head_dim/2,) RoPE inverse frequencies after linear position interpolation by `factor`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return inv_freq / factor  # angle(m) = m * theta_i / s: position m behaves like m / s


def ntk_scaled_theta(theta: float, factor: float, head_dim: int) -> float:
    """The NTK-aware base theta * factor^(d/(d-2)): the slowest pair slows by exactly `factor`."""
    return theta * factor ** (head_dim / (head_dim - 2))


def alibi_slopes(num_heads: int):
    """(num_heads,) ALiBi slopes, as in the paper's reference code."""
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (k + 1) / closest) for k in range(closest)]
    extra = [2 ** (-8 * p / (2 * closest)) for p in range(1, 2 * (num_heads - closest), 2)]
    return torch.tensor(slopes + extra)


# ---- chapter 06: instruction data ----
def rouge_l(candidate, reference):
    """ROUGE-L F1 of two strings: tokens = lowercase words split on non-alphanumerics; LCS-based P, R, F1."""
    c, r = (re.sub(r"[^a-z0-9]+", " ", text.lower()).split() for text in (candidate, reference))
    prev = [0] * (len(r) + 1)  # LCS lengths of c[:i] against every prefix of r
    for x in c:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def sft_labels(input_ids, prompt_len, attention_mask):
    """list[int] labels: -100 on the first prompt_len tokens and on padding (attention_mask 0), else the token id."""
    return [
        IGNORE_INDEX if i < prompt_len or not keep else int(tok)
        for i, (tok, keep) in enumerate(zip(input_ids, attention_mask, strict=True))
    ]


# ---- chapter 07: DeepSpeed-Chat SFT ----
def split_indices(size, data_split, train_phase, seed):
    """Indices of phase train_phase's share of `size` records: a seeded shuffle cut at the cumulative shares."""
    parts = [float(x) for x in data_split.split(",")]
    shares = [x / sum(parts) for x in parts]
    bounds = [0] + [int(round(size * sum(shares[: i + 1]))) for i in range(3)]
    order = np.random.RandomState(seed).permutation(size)
    return order[bounds[train_phase - 1] : bounds[train_phase]].tolist()


def first_stop(ids, stop_sequences):
    """Index where the earliest of the stop sequences starts in the list `ids`, or None."""
    starts = [
        i
        for seq in stop_sequences
        for i in range(len(ids) - len(seq) + 1)
        if ids[i : i + len(seq)] == list(seq)
    ]
    return min(starts, default=None)
