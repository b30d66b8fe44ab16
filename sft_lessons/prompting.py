"""Prompt learning: templates with [X]/[Z] slots, verbalizers, label-word scoring, zero-shot (第 1 章, notebooks/01_prompt_learning.ipynb).

The three stages of prompting (Liu et al. 2021, arXiv 2107.13586) map onto this module:
prompt addition -> `PromptTemplate`; answer search -> `score_label_words`; answer mapping -> `Verbalizer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from .data import IGNORE_INDEX
from .device import progress

X_SLOT, Z_SLOT = "[X]", "[Z]"
AGGREGATES = ("sum", "mean")
# content-free inputs for contextual calibration, as in the code of Zhao et al. 2021 (run_classification.py)
CONTENT_FREE = ("N/A", "", "[MASK]")
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with an input slot [X] and an answer slot [Z] (no [Z] means: at the end, a prefix prompt)."""

    text: str
    name: str = ""

    def __post_init__(self):
        n_x, n_z = self.text.count(X_SLOT), self.text.count(Z_SLOT)
        if n_x != 1:
            raise ValueError(
                f"template {self.text!r} must contain the input slot [X] exactly once, found {n_x}"
            )
        if n_z > 1:
            raise ValueError(
                f"template {self.text!r} may contain the answer slot [Z] at most once, found {n_z}"
            )

    @property
    def kind(self) -> str:
        """'prefix' when the answer slot is at the end, 'cloze' when text follows it."""
        return "cloze" if Z_SLOT in self.text and not self.text.rstrip().endswith(Z_SLOT) else "prefix"

    def split(self, x: str) -> tuple[str, str]:
        """(prompt before [Z], text after [Z]) with `x` in [X]; the space before [Z] goes to the label word."""
        before, after = self.text.split(Z_SLOT) if Z_SLOT in self.text else (self.text, "")
        # BPE tokenizers attach a word's leading space to the word (' positive'), so the prompt must not end in one
        return before.rstrip(" ").replace(X_SLOT, x), after.replace(X_SLOT, x)

    def fill(self, x: str, z: str = "") -> str:
        """The whole text with `x` in [X] and the label word `z` (with its leading space, e.g. ' great') in [Z]."""
        before, after = self.split(x)
        return before + z + after


@dataclass(frozen=True)
class Verbalizer:
    """Label words per label, e.g. {0: [" bad"], 1: [" good"]}: answer mapping z -> y.

    A word's score is the sum (a joint log-probability) or the mean (per token) of its tokens' log-probs;
    a label's score is the logsumexp over its words (the probability that the LM says any of them).
    """

    label_words: Mapping[int, Sequence[str]] | Sequence[Sequence[str] | str]
    aggregate: str = "sum"
    name: str = ""

    def __post_init__(self):
        words = self.label_words
        if isinstance(words, Mapping):
            if not words:
                raise ValueError(
                    "empty verbalizer: give label words per label, e.g. {0: [' bad'], 1: [' good']}"
                )
            if sorted(words) != list(range(len(words))):
                raise ValueError(f"verbalizer labels must be 0..{len(words) - 1}, got {sorted(words)}")
            words = [words[i] for i in range(len(words))]
        if isinstance(words, str) or len(words) == 0:
            raise ValueError(
                f"empty verbalizer {self.label_words!r}: give label words per label, e.g. {{0: [' bad'], 1: [' good']}}"
            )
        normalized = []
        for label, ws in enumerate(words):
            ws = (ws,) if isinstance(ws, str) else tuple(ws)
            if not ws:
                raise ValueError(f"label {label} has no label words; give at least one, e.g. [' good']")
            for w in ws:
                if not isinstance(w, str) or not w:
                    raise ValueError(f"label word {w!r} of label {label} must be a non-empty string")
            normalized.append(ws)
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={self.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        object.__setattr__(self, "label_words", tuple(normalized))

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def first_words(self) -> list[str]:
        """One word per label (the first), e.g. to write demonstrations."""
        return [ws[0] for ws in self.label_words]

    def token_ids(self, tokenizer) -> list[list[list[int]]]:
        """[label][word] -> token ids; raises if a word tokenizes to nothing."""
        out = []
        for label, ws in enumerate(self.label_words):
            ids = [encode(tokenizer, w) for w in ws]
            for w, i in zip(ws, ids, strict=True):
                if not i:
                    raise ValueError(
                        f"label word {w!r} of label {label} tokenizes to nothing; use visible text"
                    )
            out.append(ids)
        return out

    def is_single_token(self, tokenizer) -> bool:
        """True when every label word is one token (then one forward pass per prompt scores all labels)."""
        return all(len(i) == 1 for ws in self.token_ids(tokenizer) for i in ws)

    def read(self, next_log_probs, tokenizer):
        """(n, vocab) next-token log-probs -> (n, num_labels) label scores, for single-token label words."""
        if not self.is_single_token(tokenizer):
            raise ValueError(f"{self.label_words!r} has multi-token words; use score_label_words instead")
        ids = self.token_ids(tokenizer)
        return torch.stack([next_log_probs[:, [i[0] for i in ws]].logsumexp(-1) for ws in ids], dim=-1)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (prompt parts are tokenized separately, then concatenated)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_template(tokenizer, instruction: str, answer_prefix: str = "", name: str = "chat") -> PromptTemplate:
    """The model's chat template around `instruction` (with its [X]) as the user turn; the reply starts with `answer_prefix`.

    A chat model tends to answer in a sentence ("The review is positive."), so the label word is rarely the
    first token of the reply; prefilling the reply's opening puts the answer slot where the label word goes.
    """
    messages = [{"role": "user", "content": instruction}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PromptTemplate(text + answer_prefix, name=name)


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _pad_batch(seqs, pad_id, side, device):
    """list of id lists -> (b, T) ids and attention mask, padded on `side`."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[row, cols] = torch.tensor(s, dtype=torch.long)
        mask[row, cols] = 1
    return ids.to(device), mask.to(device)


def cached_batch_inputs(seqs, pad_id, prefix_length: int = 0, padding_side: str = "left", device="cpu") -> dict:
    """Model inputs for a batch of queries behind a cached prefix of `prefix_length` tokens.

    input_ids (b, T) padded on `padding_side`; attention_mask (b, P+T): the prefix all visible, padding hidden;
    position_ids (b, T) with left padding: P, P+1, ... over the real tokens only (None with right padding).
    """
    ids, mask = _pad_batch(seqs, pad_id, padding_side, device)  # (b, T)
    if prefix_length:
        ones = torch.ones((ids.shape[0], prefix_length), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([ones, mask], dim=1)  # (b, P+T)
    positions = None
    if padding_side == "left":
        # positions count real tokens only; left padding would otherwise shift every position by the pad count
        positions = prefix_length + (mask[:, prefix_length:].cumsum(-1) - 1).clamp(min=0)  # (b, T)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def _forward_log_probs(model, seqs, pad_id, n_last, prefix_cache=None, padding_side="left"):
    """log-softmax logits that predict the last `n_last` tokens of each sequence (and the next one): (b, n_last+1, V)."""
    device = next(model.parameters()).device
    past = prefix_cache.length if prefix_cache is not None else 0
    inputs = cached_batch_inputs(seqs, pad_id, past, padding_side, device)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    b, width = ids.shape
    kwargs = {"use_cache": prefix_cache is not None}
    if prefix_cache is not None:
        kwargs["cache"] = prefix_cache.for_batch(b)  # a fresh copy: the model extends it in place
    if padding_side == "left":
        kwargs["position_ids"] = inputs["position_ids"]
        kwargs["logits_to_keep"] = n_last + 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
    if padding_side == "left":
        return logits[:, -(n_last + 1) :].log_softmax(-1)  # (b, n_last+1, V)
    lengths = [len(s) for s in seqs]
    logits = logits[:, -width:]  # peft prompt tuning prepends its virtual tokens' logits
    rows = [logits[i, lengths[i] - n_last - 1 : lengths[i]] for i in range(b)]
    return torch.stack(rows).log_softmax(-1)  # (b, n_last+1, V)


def _check_padding(model, padding_side):
    if padding_side is None:
        # peft prompt tuning drops position_ids, so left padding would misplace positions: pad on the right
        padding_side = "right" if _is_prompt_learning(model) else "left"
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side={padding_side!r}; valid: {', '.join(PADDING_SIDES)}")
    return padding_side


def _prompt_ids(tokenizer, prompts, prefix_ids):
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    ids = [list(prefix_ids or []) + encode(tokenizer, p) for p in prompts]
    for p, i in zip(prompts, ids, strict=True):
        if not i:
            raise ValueError(f"prompt {p!r} tokenizes to nothing; the LM needs at least one context token")
    return ids


def next_token_log_probs(
    model, tokenizer, prompts, batch_size=16, prefix_ids=None, prefix_cache=None, padding_side=None
):
    """list[str] -> (n, vocab) log-probs of the token after each prompt (the answer slot of a prefix prompt)."""
    padding_side = _check_padding(model, padding_side)
    seqs = _prompt_ids(tokenizer, prompts, prefix_ids)
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        out.append(
            _forward_log_probs(model, chunk, tokenizer.pad_token_id, 0, prefix_cache, padding_side)[:, -1]
        )
    return torch.cat(out)


def continuation_log_probs(
    model,
    tokenizer,
    prompts,
    continuations,
    batch_size=16,
    prefix_ids=None,
    prefix_cache=None,
    padding_side=None,
):
    """Per-token log-probs of each continuation given its prompt: a list of n 1-D tensors."""
    padding_side = _check_padding(model, padding_side)
    ctx = _prompt_ids(tokenizer, prompts, prefix_ids)
    conts = [encode(tokenizer, c) if isinstance(c, str) else list(c) for c in continuations]
    if len(ctx) != len(conts):
        raise ValueError(f"{len(ctx)} prompts but {len(conts)} continuations")
    out = []
    for start in range(0, len(ctx), batch_size):
        cont = conts[start : start + batch_size]
        n_last = max(len(c) for c in cont)
        seqs = [a + c for a, c in zip(ctx[start : start + batch_size], cont, strict=True)]
        lp = _forward_log_probs(model, seqs, tokenizer.pad_token_id, n_last, prefix_cache, padding_side)
        for row, c in enumerate(cont):
            # token c[j] sits at position -(len(c) - j); the logits one step earlier predict it
            steps = lp[row, n_last - len(c) : n_last]  # (len(c), V)
            target = torch.tensor(c, device=steps.device).unsqueeze(-1)  # (len(c), 1)
            out.append(steps.gather(-1, target).squeeze(-1))
    return out


def aggregate_word_score(token_log_probs, aggregate: str = "sum"):
    """1-D per-token log-probs of one label word -> its score: the sum (joint log-prob) or the mean."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate={aggregate!r}; valid: {', '.join(AGGREGATES)}")
    return token_log_probs.sum() if aggregate == "sum" else token_log_probs.mean()


def score_label_words(
    model,
    tokenizer,
    prompts,
    verbalizer: Verbalizer,
    suffix: str = "",
    batch_size: int = 16,
    prefix_ids=None,
    prefix_cache=None,
    padding_side=None,
):
    """list[str] -> (n, num_labels) label scores: log P(label word [+ suffix] | prompt), batched.

    Single-token words without a suffix take one forward pass per prompt; otherwise every (prompt, word)
    pair is scored. `prefix_ids`/`prefix_cache` put a shared prefix (e.g. demonstrations) before each prompt.
    """
    word_ids = verbalizer.token_ids(tokenizer)  # validates the words
    if not suffix and verbalizer.is_single_token(tokenizer):
        logp = next_token_log_probs(
            model, tokenizer, prompts, batch_size, prefix_ids, prefix_cache, padding_side
        )
        return verbalizer.read(logp, tokenizer)  # (n, L)
    suffix_ids = encode(tokenizer, suffix) if suffix else []
    pairs = [(i, label, w) for i in range(len(prompts)) for label, ws in enumerate(word_ids) for w in ws]
    token_lp = continuation_log_probs(
        model,
        tokenizer,
        [prompts[i] for i, _, _ in pairs],
        [w + suffix_ids for _, _, w in pairs],
        batch_size,
        prefix_ids,
        prefix_cache,
        padding_side,
    )
    scores = torch.full((len(prompts), verbalizer.num_labels, max(map(len, word_ids))), float("-inf"))
    slot = {}
    for (i, label, _), lp in zip(pairs, token_lp, strict=True):
        k = slot[(i, label)] = slot.get((i, label), -1) + 1
        scores[i, label, k] = aggregate_word_score(lp, verbalizer.aggregate)
    return scores.logsumexp(-1)  # (n, L): any of the label's words


def contextual_calibration(scores, content_free_scores):
    """(n, L) scores, (L,) or (m, L) content-free scores -> (n, L) calibrated log-probs (Zhao et al. 2021).

    W = diag(p_cf)^-1, b = 0: divide the label probabilities by those the LM gives a content-free input
    such as "N/A", then renormalise. A content-free input then gets the uniform distribution. With several
    content-free inputs (CONTENT_FREE), their label probabilities are averaged first.
    """
    p = scores.log_softmax(-1)  # (n, L)
    cf = content_free_scores.reshape(-1, scores.shape[-1])  # (m, L)
    # as the authors' code does: average the label probabilities of the m inputs, then renormalise over the labels
    p_cf = (cf.logsumexp(0) - math.log(cf.shape[0])).log_softmax(-1)  # (L,)
    return (p - p_cf).log_softmax(-1)


@dataclass
class Classification:
    """Predictions (n,) and the label log-probs (n, L) they came from."""

    predictions: object
    log_probs: object

    def accuracy(self, labels) -> float:
        return accuracy(self.predictions, labels)


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape"
        )
    return (predictions == labels).float().mean().item()


def zero_shot_classify(
    model,
    tokenizer,
    texts,
    template: PromptTemplate,
    verbalizer: Verbalizer,
    calibrate: bool = False,
    content_free: str = "N/A",
    batch_size: int = 16,
) -> Classification:
    """Fill each text into the template, score the label words, optionally calibrate, take the argmax."""
    parts = [template.split(t) for t in texts]
    suffixes = {after for _, after in parts}
    if len(suffixes) != 1:
        raise ValueError(
            f"template {template.text!r}: put [X] before [Z] so that all inputs share the suffix"
        )
    suffix = suffixes.pop()
    kwargs = dict(suffix=suffix, batch_size=batch_size)
    scores = score_label_words(model, tokenizer, [p for p, _ in parts], verbalizer, **kwargs)
    log_probs = scores.log_softmax(-1)
    if calibrate:
        cf = score_label_words(model, tokenizer, [template.split(content_free)[0]], verbalizer, **kwargs)
        log_probs = contextual_calibration(scores, cf)
    return Classification(log_probs.argmax(-1), log_probs)


# The chapter's experiment grid: three prefix templates x two single-token verbalizers.
TEMPLATES = {
    "review-sentiment": PromptTemplate("Review: [X]\nSentiment:", "review-sentiment"),
    "overall-it-was": PromptTemplate("[X] Overall, it was", "overall-it-was"),
    "question-answer": PromptTemplate(
        "Is the following movie review positive or negative?\nReview: [X]\nAnswer:", "question-answer"
    ),
}
VERBALIZERS = {
    "negative/positive": Verbalizer({0: [" negative"], 1: [" positive"]}, name="negative/positive"),
    "bad/good": Verbalizer({0: [" bad"], 1: [" good"]}, name="bad/good"),
}


def soft_prompt_model(model, num_virtual_tokens: int = 8, init_text: str | None = None):
    """Wrap `model` with a peft prompt-tuning soft prompt (initialised from `init_text` when given)."""
    kwargs = dict(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    if init_text:
        kwargs.update(
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=model.name_or_path,  # a local folder for our cached models
        )
    return get_peft_model(model, PromptTuningConfig(**kwargs))


def train_soft_prompt(
    peft_model,
    tokenizer,
    texts,
    labels,
    template,
    verbalizer,
    steps=30,
    batch_size=8,
    lr=3e-2,
    max_length=48,
    seed=0,
):
    """Train only the soft prompt: cross-entropy on the label word after the filled template; returns losses."""
    words = [encode(tokenizer, w) for w in verbalizer.first_words()]
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    peft_model.train()
    losses = []

    for _ in progress(range(steps), "soft prompt"):
        idx = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        seqs, targets = [], []
        for i in idx:
            prompt = encode(tokenizer, template.split(texts[i])[0])[-(max_length - len(words[labels[i]])) :]
            seqs.append(prompt + words[labels[i]])
            targets.append([IGNORE_INDEX] * len(prompt) + words[labels[i]])  # loss on the label word only
        device = next(peft_model.parameters()).device
        ids, mask = _pad_batch(seqs, tokenizer.pad_token_id, "right", device)
        target = torch.full_like(ids, IGNORE_INDEX)
        for row, t in enumerate(targets):
            target[row, : len(t)] = torch.tensor(t)
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    peft_model.eval()
    return losses
