"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations


# ---- chapter 01: prompt learning ----
def calibrated_predictions(log_probs, content_free_log_probs):
    """(n, L) label log-probs, (L,) content-free log-probs -> (n,) calibrated predictions."""
    p = log_probs.log_softmax(-1)  # (n, L) renormalised over the labels
    p_cf = content_free_log_probs.log_softmax(-1)  # (L,)
    return (p - p_cf).argmax(-1)  # log of W p with W = diag(p_cf)^-1


def label_scores(token_log_probs, aggregate="sum"):
    """token_log_probs[label][word] = 1-D per-token log-probs -> (L,) label scores."""
    import torch

    def word(lp):
        return lp.sum() if aggregate == "sum" else lp.mean()

    return torch.stack([torch.stack([word(lp) for lp in words]).logsumexp(0) for words in token_log_probs])


# ---- chapter 02: in-context learning ----
def sample_balanced_demos(pool, k, seed=0):
    """k (even) demonstrations from `pool` (a list of (text, label) pairs), k/2 per label, shuffled, seeded."""
    import random

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
# (chapter 03 solutions go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 solutions go here)


# ---- chapter 05: context extension ----
# (chapter 05 solutions go here)


# ---- chapter 06: instruction data ----
# (chapter 06 solutions go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 solutions go here)
