import json
import math

import pytest
import torch

from sft_lessons import padding
from sft_lessons.course import bench
from sft_lessons.models import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_trim_padding():
    batch = {
        "input_ids": torch.ones(2, 6),
        "attention_mask": torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]),
    }
    assert padding.trim_padding(batch)["input_ids"].shape == (2, 3)


def test_length_grouped_batches():
    lengths = [int(x) for x in torch.randint(10, 200, (101,), generator=torch.Generator().manual_seed(0))]
    sampler = padding.LengthGroupedBatches(lengths, batch_size=4, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(101)) and len(sampler) == 26
    assert batches == list(sampler)  # deterministic within an epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    shuffled = torch.randperm(101, generator=torch.Generator().manual_seed(1)).tolist()
    random_padded = sum(4 * max(lengths[i] for i in shuffled[k : k + 4]) for k in range(0, 101, 4))
    assert padded < 0.85 * random_padded  # far less padding than random batches
    ranks = [list(padding.LengthGroupedBatches(lengths, 4, seed=1, rank=r, world=2)) for r in (0, 1)]
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_compare_padding_quick(tok):
    r = bench.compare_padding(tok, max_seq_len=384, quick=True, batch_size=4, n_batches=2)
    assert r["loss_equal"] is True and r["max_loss_diff"] <= 1e-4
    fractions = {s: r[s]["padding_fraction"] for s in bench.PADDING_SCHEMES}
    assert fractions["max_length"] > fractions["longest"] >= fractions["longest_grouped"] >= 0
    assert r["max_length"]["epoch_padding_fraction"] > r["longest"]["epoch_padding_fraction"]
    assert r["faster"] in ("longest", "longest_grouped")
    assert math.isfinite(r["speedup"]) and r["speedup"] > 0
    assert r["records"] + r["dropped"] == 280
    json.dumps(r)  # JSON-ready
    with pytest.raises(ValueError, match="max_seq_len=16 keeps 0 of 280 records"):
        bench.compare_padding(tok, max_seq_len=16, quick=True)

