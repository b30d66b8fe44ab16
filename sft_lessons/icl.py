"""In-context learning (ICL): k demonstrations + the query in one prompt, no parameter update (第 2 章, notebooks/02_in_context_learning.ipynb).

The demonstrations are the same for every query, so their keys and values (the KV cache) are computed once
and reused instead of once per query (chapter 2 measures the saving, and what k-shot still costs over 0-shot).
"""

from __future__ import annotations

import hashlib
import random
import statistics
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .data import load_reviews
from .prompting import TEMPLATES, VERBALIZERS, PromptTemplate, Verbalizer, encode, score_label_words
from .timing import interleaved_times, timed_call


def as_pairs(data) -> list[tuple[str, int]]:
    """(text, label) pairs from a datasets.Dataset, a dict of columns, dicts with text/label, or pairs."""
    if hasattr(data, "column_names") or isinstance(data, dict):
        return list(zip(data["text"], data["label"], strict=True))
    pairs = []
    for item in data:
        text, label = (item["text"], item["label"]) if isinstance(item, dict) else item
        pairs.append((text, int(label)))
    return pairs


def sample_demos(pool, k: int, seed: int = 0) -> list[tuple[str, int]]:
    """k demonstrations drawn at random (without replacement, seeded) from `pool`."""
    pairs = as_pairs(pool)
    if not 0 <= k <= len(pairs):
        raise ValueError(f"k={k}; valid: 0..{len(pairs)} (the pool size)")
    return random.Random(seed).sample(pairs, k)


def demo_prefix(demos, template: PromptTemplate, verbalizer: Verbalizer, sep: str = "\n\n") -> str:
    """The shared prefix: each demonstration filled into the template with its label word, then `sep`."""
    words = verbalizer.first_words()
    return "".join(template.fill(text, words[label]) + sep for text, label in as_pairs(demos))


def build_icl_prompt(
    demos, query: str, template: PromptTemplate, verbalizer: Verbalizer, sep: str = "\n\n"
) -> str:
    """The k-shot prompt: the demonstration prefix, then the query filled into the template up to [Z]."""
    return demo_prefix(demos, template, verbalizer, sep) + template.split(query)[0]


def parameter_fingerprint(model) -> str:
    """sha256 over every parameter's bytes: equal fingerprints mean no parameter changed."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(
            p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        )  # raw bytes, any dtype
    return digest.hexdigest()


class PrefixCache:
    """The KV cache of a shared prefix, computed once; `for_batch(b)` gives a new cache object for b queries."""

    def __init__(self, model, prefix_ids: list[int]):
        if not prefix_ids:
            raise ValueError("empty prefix: there is nothing to cache (use the plain path for k=0)")
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prefix_ids], device=device), use_cache=True)
        # per layer (1, kv_heads, P, head_dim); transformers 5.24 still accepts the old name `past_key_values`
        self.layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        self.length = len(prefix_ids)

    def for_batch(self, batch_size: int):
        """A new DynamicCache holding the prefix for `batch_size` rows; the stored prefix is never mutated."""
        # the model appends each batch's keys/values to the cache object (torch.cat, then reassigns), so each batch
        # gets its own object; building it cats the expand views onto empty layers: a (b, kv_heads, P, head_dim) copy
        return DynamicCache(
            [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self.layers]
        )


def by_length(lengths: list[int]) -> list[int]:
    """Indices that sort the queries shortest first (stable), so each batch is padded less."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


@dataclass
class ICLResult:
    """Accuracy (correct / n, float64), predictions (n,), label log-probs (n, L) and wall time of one ICL evaluation."""

    accuracy: float
    predictions: object
    log_probs: object
    seconds: float


def icl_accuracy(
    model,
    tokenizer,
    demos,
    eval_set,
    template: PromptTemplate,
    verbalizer: Verbalizer,
    sep: str = "\n\n",
    use_cache: bool = True,
    batch_size: int = 16,
) -> ICLResult:
    """k-shot accuracy on `eval_set`; use_cache=True runs the demonstrations once and reuses their KV cache.

    Prefix and query are tokenized separately and their ids concatenated, so both paths see the same ids.
    Queries are batched shortest first (less left padding); results come back in the order of `eval_set`.
    """
    pairs = as_pairs(eval_set)
    parts = [template.split(text) for text, _ in pairs]
    suffixes = {after for _, after in parts}
    if len(suffixes) != 1:
        raise ValueError(
            f"template {template.text!r}: put [X] before [Z] so that all queries share the suffix"
        )

    def score():  # timed as a whole: tokenizing the prefix and building its cache count too
        prefix = demo_prefix(demos, template, verbalizer, sep)
        prefix_ids = encode(tokenizer, prefix) if prefix else []
        kwargs = dict(suffix=next(iter(suffixes)), batch_size=batch_size)
        if use_cache and prefix_ids:
            kwargs["prefix_cache"] = PrefixCache(model, prefix_ids)
        else:
            kwargs["prefix_ids"] = prefix_ids  # naive: the prefix is recomputed for every query
        order = by_length([len(encode(tokenizer, p)) for p, _ in parts])
        sorted_scores = score_label_words(model, tokenizer, [parts[i][0] for i in order], verbalizer, **kwargs)
        return sorted_scores[torch.argsort(torch.tensor(order))]  # (n, L) back in the input order

    seconds, scores = timed_call(score, next(model.parameters()).device)
    log_probs = scores.log_softmax(-1)
    predictions = log_probs.argmax(-1)
    labels = torch.tensor([label for _, label in pairs])  # (n,)
    acc = int((predictions.cpu() == labels).sum()) / len(pairs)  # exact k/n in float64, as stats.wilson prints it
    return ICLResult(acc, predictions, log_probs, seconds)


def compare_prefix_cache(
    model,
    tokenizer,
    k: int = 8,
    n_queries: int = 32,
    device=None,
    seed: int = 0,
    repeats: int = 3,
    batch_size: int = 16,
) -> dict:
    """Naive k-shot path against the prefix-KV-cache path on the bundled reviews: median seconds, same answers.

    Demonstrations: `sample_demos(train, k, seed)`; queries: the first `n_queries` test reviews; the chapter's
    template and verbalizer. One warm-up of each path on a few queries, then `repeats` interleaved timed runs.
    Raises AssertionError unless every run predicts the same labels with label log-probs within 1e-3.
    Token counts: the naive path runs the prefix once per query, the cached path once in all; `padded_*` also
    count the left padding of each batch of `batch_size` queries (shortest first, as `icl_accuracy` batches them).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; valid: >= 1")
    reviews = load_reviews()
    if not 1 <= n_queries <= len(reviews["test"]):
        raise ValueError(f"n_queries={n_queries}; valid: 1..{len(reviews['test'])}")
    if k < 1:
        raise ValueError(f"k={k}; valid: >= 1 (k=0 has no prefix to cache)")
    template, verbalizer = TEMPLATES["review-sentiment"], VERBALIZERS["negative/positive"]
    demos = sample_demos(reviews["train"], k, seed)
    queries = as_pairs(reviews["test"])[:n_queries]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        raise ValueError(f"the model is on {next(model.parameters()).device}, not on device={device}")
    results: dict[bool, list[ICLResult]] = {False: [], True: []}

    def run(use_cache, subset=queries):
        results[use_cache].append(
            icl_accuracy(model, tokenizer, demos, subset, template, verbalizer, use_cache=use_cache, batch_size=batch_size)
        )

    was_training = model.training
    model.eval()
    try:
        for use_cache in (False, True):  # warm-up on a few queries: allocations, kernel choice
            run(use_cache, queries[:2])
            results[use_cache].clear()
        # interleaved (naive, cached, cached, naive, ...), so drifting machine load hits both paths alike
        times = interleaved_times({False: lambda: run(False), True: lambda: run(True)}, repeats, 0, device)
    finally:
        model.train(was_training)
    reference, runs = results[False][0], results[False] + results[True]
    equal = all(torch.equal(reference.predictions, r.predictions) for r in runs)
    diff = max((reference.log_probs - r.log_probs).abs().max().item() for r in runs)
    if not equal or diff > 1e-3:
        raise AssertionError(f"the prefix-cache path disagrees with the naive path (log-prob diff {diff:.2e})")
    naive, cached = statistics.median(times[False]), statistics.median(times[True])
    prefix_tokens = len(encode(tokenizer, demo_prefix(demos, template, verbalizer)))
    lengths = [len(encode(tokenizer, template.split(text)[0])) for text, _ in queries]
    query_tokens = sum(lengths)
    # what the model actually runs on: icl_accuracy batches shortest first, each batch left-padded to its longest
    lengths = [lengths[i] for i in by_length(lengths)]
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
    padded_queries = sum(len(b) * max(b) for b in batches)
    return {
        "k": k,
        "n_queries": n_queries,
        "naive_s": naive,
        "cached_s": cached,
        "speedup": naive / cached,
        "predictions_equal": equal,
        "max_log_prob_diff": diff,
        "prefix_tokens": prefix_tokens,
        "tokens_naive": n_queries * prefix_tokens + query_tokens,  # the prefix once per query
        "tokens_cached": prefix_tokens + query_tokens,  # the prefix once
        "padded_naive": n_queries * prefix_tokens + padded_queries,  # the same, padding included
        "padded_cached": prefix_tokens + padded_queries,
        "naive_times": times[False],  # seconds of every repeat, for the run-to-run spread
        "cached_times": times[True],
    }
