import json
import re
from collections import Counter

import pytest
import torch

from sft_lessons import padding
from sft_lessons.course import bench
from sft_lessons.data import IGNORE_INDEX
from sft_lessons.dschat import build_sft_example, get_raw_dataset
from sft_lessons.models import tiny_causal_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def right_padded(lengths, width, leak_padding=False, seed=0):
    """A right-padded batch: row i has lengths[i] real tokens, its first token is the prompt (label -100).

    leak_padding=True gives the padding positions real labels (the pad id): the bug that masking prevents.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), 2)  # 2: the tiny tokenizer's pad id
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n], mask[row, :n] = torch.randint(3, 320, (n,), generator=g), 1
    labels = ids.clone() if leak_padding else ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---- trim_padding ----


def test_trim_padding_cuts_to_the_longest_row_exactly():
    batch = right_padded([2, 3], width=6)
    trimmed = padding.trim_padding(batch)
    assert set(trimmed) == set(batch)
    for key, value in batch.items():
        assert torch.equal(trimmed[key], value[:, :3]), key  # the first 3 columns, nothing else changed
    full = right_padded([6, 1], width=6)
    assert all(torch.equal(padding.trim_padding(full)[k], v) for k, v in full.items())  # nothing to cut
    assert padding.trim_padding(right_padded([1, 1], width=6))["labels"].shape == (2, 1)


def test_trimmed_batch_has_the_same_masked_loss_unless_padding_leaks():
    model = tiny_causal_lm("llama")
    batch = right_padded([4, 9, 6], width=16)
    with torch.no_grad():
        loss = model(**batch).loss
        trimmed = model(**padding.trim_padding(batch)).loss
        # the loss by hand: next-token cross-entropy over the labelled positions only
        logits = model(**batch).logits[:, :-1]
        by_hand = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        leaky = right_padded([4, 9, 6], width=16, leak_padding=True)
        leaky_loss = model(**leaky).loss
        leaky_trimmed = model(**padding.trim_padding(leaky)).loss
    torch.testing.assert_close(trimmed, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_hand, loss, atol=1e-5, rtol=1e-5)
    assert abs(leaky_loss - leaky_trimmed) > 1e-3  # padding that is learnt: the width changes the loss


# ---- LengthGroupedBatches ----

LENGTHS = [int(x) for x in torch.randint(10, 200, (101,), generator=torch.Generator().manual_seed(0))]


def indices(batches):
    return Counter(i for b in batches for i in b)


def test_length_grouped_batches_in_one_window_are_the_sorted_chunks():
    lengths = [50, 10, 40, 20, 30, 60, 5]  # 7 records, one window (16 batches of 2): sorted 6 1 3 4 2 0 5
    batches = list(padding.LengthGroupedBatches(lengths, batch_size=2, seed=0))
    assert sorted(batches) == sorted([[6, 1], [3, 4], [2, 0], [5]])
    assert len(padding.LengthGroupedBatches(lengths, batch_size=2, seed=0)) == 4


def test_length_grouped_batches_cover_every_index_once_per_epoch():
    sampler = padding.LengthGroupedBatches(LENGTHS, batch_size=4, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert indices(batches) == Counter(range(101))  # every record exactly once
        # windows of 64 and 37 records: 16 + 9 full batches and one batch of 1
        assert len(sampler) == len(batches) == 26 and sorted(map(len, batches)) == [1] + [4] * 25
        for b in batches:  # sorted by length within a batch
            assert [LENGTHS[i] for i in b] == sorted(LENGTHS[i] for i in b)


def test_length_grouped_batches_are_seeded_per_epoch():
    sampler = padding.LengthGroupedBatches(LENGTHS, batch_size=4, seed=1)
    first = list(sampler)
    assert first == list(sampler) == list(padding.LengthGroupedBatches(LENGTHS, 4, seed=1))  # same seed
    assert first != list(padding.LengthGroupedBatches(LENGTHS, 4, seed=2))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(map(sorted, second)) != sorted(
        map(sorted, first)
    )  # new groups, not a reorder
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_length_grouped_batches_pad_less_than_random_batches():
    batches = list(padding.LengthGroupedBatches(LENGTHS, batch_size=4, seed=1))
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)
    shuffled = torch.randperm(101, generator=torch.Generator().manual_seed(1)).tolist()
    random_padded = sum(4 * max(LENGTHS[i] for i in shuffled[k : k + 4]) for k in range(0, 101, 4))
    assert padded < 0.85 * random_padded


@pytest.mark.parametrize("epoch", [0, 1])
def test_length_grouped_batches_shard_disjoint_and_complete(epoch):
    full = padding.LengthGroupedBatches(LENGTHS, 4, seed=1)
    full.set_epoch(epoch)
    shards = []
    for rank in range(3):
        sampler = padding.LengthGroupedBatches(LENGTHS, 4, seed=1, rank=rank, world=3)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert indices(b for shard in shards for b in shard) == Counter(range(101))  # disjoint and complete
    assert sorted(map(len, shards)) == [8, 9, 9]  # 26 batches dealt out round robin
    assert sorted(b for shard in shards for b in shard) == sorted(full)  # the same batches, split up


# ---- bench.compare_padding on hand-made records ----

HAND_LENGTHS = [3, 14, 5, 16, 7, 2, 12, 4, 9, 20]  # max_seq_len 16: the 20 is dropped, 9 kept (72 tokens)


def hand_made_records(monkeypatch, leak_padding=False):
    """compare_padding on records of the lengths above (prompt = 1 token), instead of chapter 7's data."""

    class Raw:
        def get_train_data(self):
            return [{"prompt": n, "chosen": ""} for n in HAND_LENGTHS]

    def build(tokenizer, n, response, max_seq_len, eot_ids):
        if n > max_seq_len:
            return None
        return {k: v[0] for k, v in right_padded([n], max_seq_len, leak_padding, seed=n).items()}

    monkeypatch.setattr(bench, "get_raw_dataset", lambda name: Raw())
    monkeypatch.setattr(bench, "build_sft_example", build)


def count_tokens(monkeypatch, model, seconds_per_token):
    """Replace the clock: a timed call takes seconds_per_token per token the model ran on; returns the log."""
    seen, calls = [], []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)

    def fake_timed_call(fn, device=None, clock="wall"):
        seen.clear()
        result = fn()
        (kwargs,) = seen  # one forward per timed call
        calls.append(kwargs["attention_mask"].sum(1).tolist())
        return kwargs["input_ids"].numel() * seconds_per_token, result

    monkeypatch.setattr(bench, "timed_call", fake_timed_call)
    return calls


def test_compare_padding_fractions_speed_and_loss_on_hand_made_records(monkeypatch, tok):
    hand_made_records(monkeypatch)
    model = tiny_causal_lm("llama", vocab_size=len(tok)).train()
    calls = count_tokens(monkeypatch, model, seconds_per_token=1e-3)
    r = bench.compare_padding(tok, max_seq_len=16, model=model, batch_size=4, n_batches=2)
    assert (r["records"], r["dropped"]) == (9, 1)
    assert model.training and all(
        p.grad is None for p in model.parameters()
    )  # the caller's state is restored

    # the whole epoch (all 9 records), by hand: 72 real tokens
    assert r["max_length"]["epoch_padding_fraction"] == pytest.approx(1 - 72 / (9 * 16))
    # one window: sorted 2 3 4 5 | 7 9 12 14 | 16 -> 4 * 5 + 4 * 14 + 16 = 92 tokens run
    assert r["longest_grouped"]["epoch_padding_fraction"] == pytest.approx(1 - 72 / 92)
    assert 1 - 72 / 92 <= r["longest"]["epoch_padding_fraction"] <= 1 - 72 / 144

    # the timed batches: 3 schemes x 2 batches, each scheme runs the same 8 records once
    assert len(calls) == 6
    seen = Counter(n for rows in calls for n in rows)
    assert all(count == 3 for count in seen.values()) and sum(seen.values()) == 24
    subset = sorted(seen)  # the 8 timed records' lengths
    assert set(subset) < set(HAND_LENGTHS[:-1])
    real = sum(subset)
    ran = {s: r[s]["seconds"] / 1e-3 for s in bench.PADDING_SCHEMES}  # tokens each scheme ran on
    assert ran["max_length"] == pytest.approx(8 * 16)
    assert ran["longest_grouped"] == pytest.approx(4 * subset[3] + 4 * subset[7])  # sorted chunks of 4
    assert ran["longest_grouped"] <= ran["longest"] <= ran["max_length"]
    for s in bench.PADDING_SCHEMES:
        assert r[s]["padding_fraction"] == pytest.approx(1 - real / ran[s])
        assert r[s]["tokens_per_s"] == pytest.approx(real / r[s]["seconds"])
    best = "longest_grouped" if ran["longest_grouped"] < ran["longest"] else "longest"
    assert r["faster"] == best
    assert r["speedup"] == pytest.approx(ran["max_length"] / ran[best])
    assert 0 <= r["max_loss_diff"] <= 1e-4 and r["loss_equal"]


def test_compare_padding_catches_padding_that_is_learnt(monkeypatch, tok):
    hand_made_records(monkeypatch, leak_padding=True)  # labels on the padding: the loss depends on the width
    with pytest.raises(AssertionError, match="the masked loss depends on the padding") as err:
        bench.compare_padding(tok, max_seq_len=16, batch_size=4, n_batches=2)
    assert float(re.search(r"largest difference (\S+)", str(err.value)).group(1)) > 1e-4


def test_compare_padding_on_chapter_7_records(tok):
    r = bench.compare_padding(tok, max_seq_len=384, quick=True, batch_size=4, n_batches=2)
    records = get_raw_dataset("local/hh_sft").get_train_data()
    built = [build_sft_example(tok, x["prompt"], x["chosen"], 384, [tok.eos_token_id]) for x in records]
    lengths = [int(e["attention_mask"].sum()) for e in built if e is not None]
    assert len(records) == 280 and (r["records"], r["dropped"]) == (len(lengths), 280 - len(lengths))
    epoch = {s: r[s]["epoch_padding_fraction"] for s in bench.PADDING_SCHEMES}
    assert epoch["max_length"] == pytest.approx(1 - sum(lengths) / (len(lengths) * 384))
    assert epoch["max_length"] > epoch["longest"] > epoch["longest_grouped"] > 0  # grouping pads less
    real = [r[s]["tokens_per_s"] * r[s]["seconds"] for s in bench.PADDING_SCHEMES]
    assert real == pytest.approx([(1 - r["max_length"]["padding_fraction"]) * 8 * 384] * 3)  # same records
    fractions = [r[s]["padding_fraction"] for s in bench.PADDING_SCHEMES]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] > fractions[1]
    best = max(("longest", "longest_grouped"), key=lambda s: r[s]["tokens_per_s"])
    assert r["faster"] == best
    assert r["speedup"] == pytest.approx(r[best]["tokens_per_s"] / r["max_length"]["tokens_per_s"])
    assert 0 <= r["max_loss_diff"] <= 1e-4
    json.dumps(r)  # JSON-ready
    with pytest.raises(ValueError, match="max_seq_len=16 keeps 0 of 280 records"):
        bench.compare_padding(tok, max_seq_len=16, quick=True)


# ---- padding-free batches: one row, positions restart per record, records kept apart ----


def per_record_loss_sums(logits, labels, lengths):
    """Summed next-token loss of each record of a (N, V) logits / (N,) labels row laid out record after record."""
    out, start = [], 0
    for n in lengths:
        lg, lb = logits[start : start + n], labels[start : start + n]
        out.append(torch.nn.functional.cross_entropy(lg[:-1], lb[1:], ignore_index=IGNORE_INDEX, reduction="sum"))
        start += n
    return torch.stack(out)


def test_flatten_batch_keeps_real_tokens_and_restarts_positions():
    lengths = [5, 2, 7]
    batch = right_padded(lengths, 9)
    batch["labels"][:, 0] = 7  # a labelled first token: flattening must unlabel it
    flat = padding.flatten_batch(batch)
    assert flat.keys() == {"input_ids", "labels", "position_ids"}  # no attention_mask: the mask comes from positions
    assert flat["input_ids"].shape == (1, sum(lengths))
    assert flat["position_ids"][0].tolist() == [*range(5), *range(2), *range(7)]
    starts = [0, 5, 7]
    assert all(flat["labels"][0, s] == IGNORE_INDEX for s in starts)
    keep = batch["attention_mask"].bool()
    assert torch.equal(flat["input_ids"][0], batch["input_ids"][keep])


def test_flattened_batch_gives_each_record_its_own_loss():
    model = tiny_causal_lm("llama", seed=0).eval()
    lengths = [9, 4, 12, 6]
    batch = right_padded(lengths, 12, seed=3)
    flat = padding.flatten_batch(batch)
    with torch.no_grad():
        alone = torch.stack([
            per_record_loss_sums(model(input_ids=batch["input_ids"][i : i + 1, :n]).logits[0],
                                 batch["labels"][i, :n], [n])[0]
            for i, n in enumerate(lengths)
        ])  # fmt: skip
        packed = model(**flat, use_cache=False).logits[0]
        leaky = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"]).logits[0]  # cache on
    torch.testing.assert_close(per_record_loss_sums(packed, flat["labels"][0], lengths), alone, atol=1e-4, rtol=1e-5)
    # with the cache on (the default), transformers does not look for packed records: later records see earlier ones
    assert (per_record_loss_sums(leaky, flat["labels"][0], lengths)[1:] - alone[1:]).abs().max() > 1e-2
    assert padding.records_kept_apart(model)


def test_records_kept_apart_spots_a_model_that_ignores_positions():
    class NoPositions(torch.nn.Module):  # a model that drops position_ids: every token sees the whole row
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

    assert not padding.records_kept_apart(NoPositions(tiny_causal_lm("llama", seed=0)))
