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
    with torch.no_grad():
        model(input_ids=torch.ones((2, 5), dtype=torch.long), cache=batch_cache, use_cache=True)
    assert batch_cache.get_seq_length() == len(ids) + 5  # the batch copy grew in place ...
    for (k, _), k0 in zip(cache.layers, keys, strict=True):
        assert k.shape[-2] == len(ids) and torch.equal(k, k0)  # ... the stored prefix did not
    with pytest.raises(ValueError, match="empty prefix"):
        PrefixCache(model, [])


def test_zero_shot_is_k0(tok):
    model = tiny_causal_lm("llama")
    zero = icl_accuracy(model, tok, [], QUERIES, TEMPLATE, VERBALIZER)
    assert zero.predictions.shape == (len(QUERIES),)
    assert 0.0 <= zero.accuracy <= 1.0 and zero.seconds >= 0


def test_parameter_fingerprint_sees_any_change(tok):
    from sft_lessons.icl import parameter_fingerprint

    model = tiny_causal_lm("llama")
    before = parameter_fingerprint(model)
    icl_accuracy(model, tok, DEMOS, QUERIES, TEMPLATE, VERBALIZER)
    assert parameter_fingerprint(model) == before  # in-context learning updates nothing
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-6
    assert parameter_fingerprint(model) != before


def test_compare_prefix_cache_on_tiny_model(tok):
    import json
    import math

    from sft_lessons.icl import compare_prefix_cache

    model = tiny_causal_lm("llama").train()
    r = compare_prefix_cache(model, tok, k=4, n_queries=4, repeats=1)
    assert model.training  # the caller's mode is restored
    assert r["predictions_equal"] is True and r["k"] == 4 and r["n_queries"] == 4
    assert math.isfinite(r["speedup"]) and r["speedup"] > 0 and r["naive_s"] > 0 and r["cached_s"] > 0
    assert r["prefix_tokens"] > 0 and r["max_log_prob_diff"] <= 1e-3
    assert r["tokens_naive"] - r["tokens_cached"] == 3 * r["prefix_tokens"]  # 4 queries: the prefix 4 times vs once
    json.dumps(r)  # JSON-ready
    with pytest.raises(ValueError, match="n_queries=0"):
        compare_prefix_cache(model, tok, n_queries=0)
