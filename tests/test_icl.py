import re

import pytest
import torch

from sft_lessons.icl import (
    PrefixCache,
    as_pairs,
    build_icl_prompt,
    demo_prefix,
    icl_accuracy,
    sample_demos,
)
from sft_lessons.models import tiny_causal_lm, tiny_tokenizer
from sft_lessons.prompting import PromptTemplate, Verbalizer, encode

TEMPLATE = PromptTemplate("Review: [X]\nSentiment:")
VERBALIZER = Verbalizer({0: [" negative"], 1: [" positive", " great"]})  # multi-token words in the tiny vocab
DEMOS = [("a fantastic, funny film", 1), ("an awful, dull mess", 0), ("I loved the music", 1)]
QUERIES = [
    ("great film", 1),
    ("it was not good, it was bad and boring", 0),
    ("ok", 1),
    ("I hated the ending", 0),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_build_icl_prompt():
    prompt = build_icl_prompt(DEMOS[:2], "great film", TEMPLATE, VERBALIZER)
    assert prompt == (
        "Review: a fantastic, funny film\nSentiment: positive\n\n"
        "Review: an awful, dull mess\nSentiment: negative\n\n"
        "Review: great film\nSentiment:"
    )
    assert build_icl_prompt([], "ok", TEMPLATE, VERBALIZER) == "Review: ok\nSentiment:"
    assert (
        demo_prefix(DEMOS[:1], TEMPLATE, VERBALIZER, sep=" | ")
        == "Review: a fantastic, funny film\nSentiment: positive | "
    )


def test_as_pairs_and_sampling():
    assert as_pairs({"text": ["a", "b"], "label": [0, 1]}) == [("a", 0), ("b", 1)]
    assert as_pairs([{"text": "a", "label": 1}]) == [("a", 1)]
    demos = sample_demos(QUERIES, 3, seed=1)
    assert len(demos) == 3 and len(set(demos)) == 3 and set(demos) <= set(QUERIES)
    assert demos == sample_demos(QUERIES, 3, seed=1)
    with pytest.raises(ValueError, match="k=9; valid: 0..4"):
        sample_demos(QUERIES, 9)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_cache_equals_naive(tok, arch):
    model = tiny_causal_lm(arch)
    cached = icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER, use_cache=True, batch_size=3)
    naive = icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER, use_cache=False, batch_size=3)
    torch.testing.assert_close(cached.log_probs, naive.log_probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(cached.predictions, naive.predictions)
    assert cached.accuracy == naive.accuracy


def test_naive_path_equals_one_string_per_query(tok):
    """The naive path scores exactly the ids of prefix + query (tokenized separately), one query at a time."""
    model = tiny_causal_lm("llama")
    naive = icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER, use_cache=False, batch_size=4)
    prefix_ids = encode(tok, demo_prefix(DEMOS, TEMPLATE, VERBALIZER))
    for row, (text, _) in enumerate(QUERIES):
        ids = prefix_ids + encode(tok, TEMPLATE.split(text)[0])
        scores = []
        for ws in VERBALIZER.label_words:
            per_word = []
            for w in ws:
                wid = encode(tok, w)
                with torch.no_grad():
                    logp = model(torch.tensor([ids + wid])).logits.log_softmax(-1)[0]
                per_word.append(sum(logp[len(ids) - 1 + j, t] for j, t in enumerate(wid)))
            scores.append(torch.stack(per_word).logsumexp(0))
        torch.testing.assert_close(
            naive.log_probs[row], torch.stack(scores).log_softmax(-1), atol=1e-5, rtol=1e-5
        )


def test_prefix_cache_is_not_mutated(tok):
    model = tiny_causal_lm("llama")
    ids = encode(tok, demo_prefix(DEMOS, TEMPLATE, VERBALIZER))
    cache = PrefixCache(model, ids)
    keys = [k.clone() for k, _ in cache.layers]
    batch_cache = cache.for_batch(2)
    assert batch_cache.get_seq_length() == len(ids)
    k_batch = batch_cache.layers[0].keys
    assert k_batch.shape[0] == 2 and k_batch.is_contiguous()  # building the cache copied the expanded prefix ...
    assert k_batch.data_ptr() != cache.layers[0][0].data_ptr()  # ... into new storage
    with torch.no_grad():
        model(input_ids=torch.ones((2, 5), dtype=torch.long), cache=batch_cache, use_cache=True)
    assert batch_cache.get_seq_length() == len(ids) + 5  # the batch copy grew in place ...
    for (k, _), k0 in zip(cache.layers, keys, strict=True):
        assert k.shape[-2] == len(ids) and torch.equal(k, k0)  # ... the stored prefix did not
    with pytest.raises(ValueError, match="empty prefix"):
        PrefixCache(model, [])


def test_batches_shortest_first_and_returns_input_order(tok, monkeypatch):
    """Queries go to the model shortest first; predictions and log-probs come back in the caller's order."""
    from sft_lessons import icl

    model = tiny_causal_lm("llama")
    seen = []
    score = icl.score_label_words

    def spy(model, tokenizer, prompts, verbalizer, **kwargs):
        seen.append([len(encode(tokenizer, p)) for p in prompts])
        return score(model, tokenizer, prompts, verbalizer, **kwargs)

    reference = icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER, batch_size=1)  # no padding at all
    monkeypatch.setattr(icl, "score_label_words", spy)
    batched = icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER, batch_size=2)
    assert seen[0] == sorted(seen[0]) and seen[0] != [len(encode(tok, TEMPLATE.split(q)[0])) for q, _ in QUERIES]
    torch.testing.assert_close(batched.log_probs, reference.log_probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched.predictions, reference.predictions)
    assert icl.by_length([3, 1, 2, 1]) == [1, 3, 2, 0]  # stable: ties keep their order


def test_zero_shot_is_k0(tok):
    """k = 0 is plain zero-shot classification: the same label log-probs, predictions and accuracy."""
    from sft_lessons.prompting import zero_shot_classify

    model = tiny_causal_lm("llama")
    zero = icl_accuracy(model, tok, [], QUERIES, TEMPLATE, VERBALIZER)
    plain = zero_shot_classify(model, tok, [text for text, _ in QUERIES], TEMPLATE, VERBALIZER)
    torch.testing.assert_close(zero.log_probs, plain.log_probs, atol=1e-5, rtol=1e-5)
    assert torch.equal(zero.predictions, plain.predictions)
    labels = torch.tensor([label for _, label in QUERIES])
    assert zero.accuracy == int((zero.predictions == labels).sum()) / len(QUERIES) and zero.seconds >= 0


def test_accuracy_is_exact_k_over_n(tok, monkeypatch):
    """67 of 80 correct is 0.8375 in float64 (prints 0.838, as stats.wilson does), not float32's 0.83749998."""
    from sft_lessons import icl
    from sft_lessons.stats import wilson

    queries = [(f"review {i}", i % 2) for i in range(80)]
    wrong = set(range(13))  # the first 13 predictions are wrong

    def fake_scores(model, tokenizer, prompts, verbalizer, **kwargs):  # prompts: "Review: review i\nSentiment:"
        index = [int(re.search(r"review (\d+)", p).group(1)) for p in prompts]
        pred = [1 - i % 2 if i in wrong else i % 2 for i in index]
        return torch.nn.functional.one_hot(torch.tensor(pred), 2).float()  # (n, 2)

    monkeypatch.setattr(icl, "score_label_words", fake_scores)
    r = icl_accuracy(tiny_causal_lm("llama"), tok, [], queries, TEMPLATE, VERBALIZER)
    assert r.accuracy == 67 / 80 == wilson(67, 80).value
    assert f"{r.accuracy:.3f}" == wilson(67, 80).brief()[:5] == "0.838"


def test_parameter_fingerprint_sees_any_change(tok):
    from sft_lessons.icl import parameter_fingerprint

    model = tiny_causal_lm("llama")
    before = parameter_fingerprint(model)
    icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER)
    assert parameter_fingerprint(model) == before  # in-context learning updates nothing
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-6
    assert parameter_fingerprint(model) != before


def test_compare_prefix_cache_on_tiny_model(tok, monkeypatch):
    import json

    from sft_lessons import icl
    from sft_lessons.data import load_reviews
    from sft_lessons.prompting import TEMPLATES, VERBALIZERS

    model = tiny_causal_lm("llama").train()
    timed = []

    def fake_interleaved_times(fns, repeats, warmup, device):  # runs each path, reports fixed times
        assert (repeats, warmup) == (3, 0)
        for _ in range(repeats):
            for fn in fns.values():
                fn()
        timed.append(set(fns))
        return {False: [3.0, 1.0, 2.0], True: [0.25, 1.0, 0.5]}

    monkeypatch.setattr(icl, "interleaved_times", fake_interleaved_times)
    r = icl.compare_prefix_cache(model, tok, k=4, n_queries=4, repeats=3)
    assert timed == [{False, True}]  # timed through timing.interleaved_times: naive and cached
    assert model.training  # the caller's mode is restored
    assert (r["naive_s"], r["cached_s"], r["speedup"]) == (2.0, 0.5, 4.0)  # medians, and their ratio
    assert r["k"] == 4 and r["n_queries"] == 4  # predictions_equal: see the wrong-cache test below

    # the same numbers, independently: chapter 2's template and verbalizer, 4 seeded demos, the first 4 tests
    reviews = load_reviews()
    template, verbalizer = TEMPLATES["review-sentiment"], VERBALIZERS["negative/positive"]
    demos = sample_demos(reviews["train"], 4, seed=0)
    queries = as_pairs(reviews["test"])[:4]
    prefix = len(encode(tok, demo_prefix(demos, template, verbalizer)))
    query = sum(len(encode(tok, template.split(text)[0])) for text, _ in queries)
    counts = (r["prefix_tokens"], r["tokens_naive"], r["tokens_cached"])
    assert counts == (prefix, 4 * prefix + query, prefix + query)  # n * P + Q against P + Q
    lengths = [len(encode(tok, template.split(text)[0])) for text, _ in queries]
    padded = 4 * max(lengths)  # one batch of 4, left-padded to its longest query
    assert (r["padded_naive"], r["padded_cached"]) == (4 * prefix + padded, prefix + padded)
    assert r["naive_times"] == [3.0, 1.0, 2.0] and r["cached_times"] == [0.25, 1.0, 0.5]  # every repeat
    model.eval()
    naive = icl_accuracy(model, tok, demos, queries, template, verbalizer, use_cache=False)
    cached = icl_accuracy(model, tok, demos, queries, template, verbalizer, use_cache=True)
    diff = (naive.log_probs - cached.log_probs).abs().max().item()
    assert r["max_log_prob_diff"] == pytest.approx(diff, abs=1e-6) and r["max_log_prob_diff"] <= 1e-3
    json.dumps(r)  # JSON-ready
    with pytest.raises(ValueError, match="n_queries=0"):
        icl.compare_prefix_cache(model, tok, n_queries=0)
    r3 = icl.compare_prefix_cache(model, tok, k=4, n_queries=4, repeats=3, batch_size=3)  # batches of 3 and 1
    short = sorted(lengths)  # icl_accuracy batches the shortest queries first
    assert r3["padded_cached"] == prefix + 3 * short[2] + short[3]
    assert r3["padded_naive"] == 4 * prefix + 3 * short[2] + short[3]


def test_compare_prefix_cache_catches_a_wrong_cache(tok, monkeypatch):
    """A prefix cache that does not hold the prefix's keys and values must make compare_prefix_cache fail."""
    from sft_lessons import icl

    model = tiny_causal_lm("llama")
    for_batch = icl.PrefixCache.for_batch

    def corrupted(self, batch_size):
        cache = for_batch(self, batch_size)
        for layer in cache.layers:
            layer.keys = layer.keys.flip(-2)  # the prefix positions in the wrong order
        return cache

    monkeypatch.setattr(icl.PrefixCache, "for_batch", corrupted)
    with pytest.raises(AssertionError, match="the prefix-cache path disagrees with the naive path"):
        icl.compare_prefix_cache(model, tok, k=4, n_queries=4, repeats=1)
