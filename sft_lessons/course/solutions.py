"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from ..data import IGNORE_INDEX


# ---- chapter 01: prompt learning ----
def calibrated_threshold(content_free_log_probs):
    """(2,) content-free scores (negative, positive) -> t: after calibration, positive iff P(positive) > t."""
    # p1 / c1 > p0 / c0 with p0 = 1 - p1 and c0 = 1 - c1  <=>  p1 (1 - c1) > (1 - p1) c1  <=>  p1 > c1
    return float(torch.as_tensor(content_free_log_probs).softmax(-1)[1])


def label_scores(token_log_probs, aggregate="sum"):
    """token_log_probs[label][word] = 1-D per-token log-probs -> (L,) label scores."""

    def word(lp):
        return lp.sum() if aggregate == "sum" else lp.mean()

    return torch.stack([torch.stack([word(lp) for lp in words]).logsumexp(0) for words in token_log_probs])


# ---- chapter 02: in-context learning ----
def sample_balanced_demos(pool, k, seed=0):
    """k (even) demos from `pool` (a list of (text, label) pairs), k/2 per label, shuffled, seeded."""
    if k % 2:
        raise ValueError(f"k={k}: a balanced set over 2 labels needs an even k")
    rng = random.Random(seed)
    demos = []
    for label in (0, 1):
        demos += rng.sample([d for d in pool if d[1] == label], k // 2)
    rng.shuffle(demos)
    return demos


def build_icl_prompt(demos, query, template, verbalizer, sep="\n\n"):
    """Each demo filled into `template` with its label's first word, then `sep`; then the query up to [Z]."""
    shots = "".join(template.fill(text, verbalizer.label_words[label][0]) + sep for text, label in demos)
    return shots + template.split(query)[0]  # a cloze template's text after [Z] belongs to the answer


# ---- chapter 03: LoRA math ----
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    return F.linear(x, weight, bias) + scaling * F.linear(F.linear(x, lora_A), lora_B)


def rslora_lora_scaling(r, lora_alpha):
    """The lora_scaling to give LinearLayer_LoRA(lora_dim=r) so that its s equals peft's rsLoRA scale."""
    return lora_alpha * math.sqrt(r)  # lora_scaling / r = alpha / sqrt(r)


def merge_lora(weight, lora_A, lora_B, scaling):
    """(d, k) merged weight W0 + scaling * B A; must not modify `weight`."""
    return weight + scaling * (lora_B @ lora_A)


# ---- chapter 04: LoRA variants ----
def double_dequantize(state):
    """(n_blocks,) float32 absmax constants from a DoubleQuantState (int8 codes, per-block scales, offset)."""
    n = state.codes.numel()
    pad = (-n) % state.dq_blocksize
    blocks = F.pad(state.codes.float(), (0, pad)).view(-1, state.dq_blocksize)  # (n_dq_blocks, dq_blocksize)
    return (blocks / 127 * state.scales.unsqueeze(1)).reshape(-1)[:n] + state.offset


def lora_trainable_params(model, target_modules, r):
    """LoRA parameters peft would add for nn.Linear modules whose name ends with one of target_modules."""
    return sum(
        r * (module.in_features + module.out_features)  # A is r x in, B is out x r
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in target_modules
    )


# ---- chapter 05: context extension ----
def linear_pi_frequencies(head_dim, theta, factor):
    """(head_dim/2,) RoPE inverse frequencies after linear position interpolation by `factor`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return inv_freq / factor  # angle(m) = m * theta_i / s: position m behaves like m / s


def ntk_factor(theta, new_theta, head_dim):
    """The factor s for which NTK-aware scaling turns base `theta` into `new_theta` (head_dim-dim heads)."""
    return (new_theta / theta) ** ((head_dim - 2) / head_dim)  # inverts new = theta * s^(d / (d - 2))


def alibi_slopes(num_heads):
    """(num_heads,) ALiBi slopes, as in the paper's reference code."""
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (k + 1) / closest) for k in range(closest)]
    extra = [2 ** (-8 * p / (2 * closest)) for p in range(1, 2 * (num_heads - closest), 2)]
    return torch.tensor(slopes + extra)


# ---- chapter 06: instruction data ----
def rouge_l_chars(candidate, reference):
    """ROUGE-L F1 over characters: lowercase, keep letters and digits (str.isalnum: 汉字 too), LCS P, R, F1."""
    c, r = ([ch for ch in text.lower() if ch.isalnum()] for text in (candidate, reference))
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


def multi_turn_labels(input_ids, attention_mask, assistant_header, end_of_turn):
    """list[int]: the token id inside every assistant turn (its <|im_end|> too), else IGNORE_INDEX (-100)."""
    ids, header = [int(t) for t in input_ids], [int(t) for t in assistant_header]
    labels, in_answer, i = [IGNORE_INDEX] * len(ids), False, 0
    while i < len(ids):
        if not attention_mask[i]:  # padding, found by position: its id is end_of_turn too
            in_answer = False
        elif in_answer:
            labels[i] = ids[i]
            in_answer = ids[i] != end_of_turn  # the end-of-turn token is the last target of the turn
        elif ids[i : i + len(header)] == header:
            in_answer, i = True, i + len(header)  # the header itself is a prompt, not a target
            continue
        i += 1
    return labels


# ---- chapter 07: DeepSpeed-Chat SFT ----
def phase_sizes(size, data_split):
    """[n1, n2, n3]: how many of `size` records phases 1, 2 and 3 get from data_split such as "2,4,4"."""
    try:
        parts = [float(x) for x in str(data_split).split(",")]
    except ValueError:
        raise ValueError(f"data_split {data_split!r}: expected three comma-separated numbers") from None
    if len(parts) != 3 or any(not x >= 0 for x in parts) or sum(parts) <= 0:
        raise ValueError(
            f"data_split {data_split!r}: expected three non-negative numbers with a positive sum"
        )
    shares = [x / sum(parts) for x in parts]
    bounds = [0]
    for share in shares:  # each share rounded on its own (DeepSpeed-Chat's rule) ...
        bounds.append(bounds[-1] + round(share * size))
    excess = bounds[-1] - size  # ... then every boundary moved back by what the rounding added (or lost)
    bounds = [0] + [min(max(b - excess, 0), size) for b in bounds[1:]]
    return [bounds[i + 1] - bounds[i] for i in range(3)]


def first_stop(ids, stop_sequences):
    """Index where the earliest of the stop sequences starts in the list `ids`, or None."""
    starts = [
        i
        for seq in stop_sequences
        for i in range(len(ids) - len(seq) + 1)
        if ids[i : i + len(seq)] == list(seq)
    ]
    return min(starts, default=None)
