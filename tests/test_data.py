import re
from itertools import combinations

import pytest

from sft_lessons.data import DataFormatError, data_path, load_jsonl, load_reviews


def _write(tmp_path, text):
    path = tmp_path / "x.jsonl"
    path.write_text(text)
    return path


def test_bad_json_is_reported_with_line(tmp_path):
    path = _write(tmp_path, '{"a": 1}\n\n{"a": }\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:3: invalid JSON"):
        load_jsonl(path, ["a"])


def test_missing_field_is_reported_with_line(tmp_path):
    path = _write(tmp_path, '{"a": 1}\n{"b": 2}\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: missing field 'a'"):
        load_jsonl(path, ["a"])


def test_wrong_type_is_reported_with_line(tmp_path):
    path = _write(tmp_path, '{"label": 1}\n{"label": true}\n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: field 'label' should be int, got bool"):
        load_jsonl(path, {"label": int})


def test_non_object_line(tmp_path):
    with pytest.raises(DataFormatError, match=r":1: expected a JSON object"):
        load_jsonl(_write(tmp_path, "[1, 2]\n"))


def test_unknown_data_file_lists_bundled():
    with pytest.raises(FileNotFoundError, match="reviews.jsonl"):
        data_path("nope.jsonl")


def _tokens(text):
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def test_reviews_file_is_balanced_and_varied():
    rows = load_jsonl(data_path("reviews.jsonl"), {"text": str, "label": int, "split": str, "style": str})
    assert len(rows) >= 600
    assert sum(r["label"] for r in rows) * 2 == len(rows)
    for split in ("train", "test"):
        part = [r for r in rows if r["split"] == split]
        assert sum(r["label"] for r in part) * 2 == len(part)
    assert len({r["style"] for r in rows}) >= 5
    assert all(1 <= len(re.findall(r"[.!?]+(\s|$)", r["text"])) <= 4 for r in rows)


def test_reviews_have_no_near_duplicates():
    rows = load_jsonl(data_path("reviews.jsonl"), ["text"])
    toks = [_tokens(r["text"]) for r in rows]
    worst = max(len(a & b) / len(a | b) for a, b in combinations(toks, 2))
    assert worst <= 0.6


def test_load_reviews_has_imdb_columns_and_fixed_split():
    ds = load_reviews(use_hub=False)
    assert set(ds) == {"train", "test"}
    assert ds["train"].column_names == ["text", "label"]
    assert ds["train"].features["label"].names == ["neg", "pos"]
    assert (ds["train"].num_rows, ds["test"].num_rows) == (400, 200)
    assert load_reviews(use_hub=False)["test"]["text"] == ds["test"]["text"]
