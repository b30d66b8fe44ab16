import re
from itertools import combinations

import pytest

from sft_lessons.data import DataFormatError, data_path, load_jsonl, load_ood_reviews, load_reviews


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


OOD_KINDS = {"long", "late_reversal", "unmarked_irony", "rare_vocab", "indirect"}
# The sentiment-bearing words the rare_vocab reviews are built on; none of them occurs in the training reviews.
RARE_SENTIMENT_WORDS = set(
    """
    luminous bravura incandescent transcendent sumptuous wickedly droll pleaser zingers exquisite rapturous
    mesmerizing knuckle ingeniously deliciously macabre effervescent disarmingly sublime confection tour force
    meticulous revelatory profoundly joy whimsical beguiling spellbound taut sinewy firing cylinders notch
    barnburner ravishing ethereal radiant smitten rip roaring sardonic rollicking gloriously unpretentious
    poignant mawkish stunner achingly wise visionary feat audacious dazzlingly agog turgid soporific
    interminable livelier drying leaden ham fisted telegraphed cheese dud witless mugging curdles cynical grab
    hodgepodge verve vapid insipid banal mannequins misfire risible lumbering indulgent vanity navel tedium
    cacophony incoherence clunker numb nauseous hackneyed stilted woefully miscalculated trudge misstep
    saccharine perfunctory deaf endurance tendentious hatchet sneers insufferable thud threadbare
""".split()
)


def _ood_rows():
    return load_jsonl(data_path("reviews_ood.jsonl"), {"id": str, "text": str, "label": int, "kind": str})


def _train_vocab():
    rows = load_jsonl(data_path("reviews.jsonl"), {"text": str, "split": str})
    return set().union(*(_tokens(r["text"]) for r in rows if r["split"] == "train"))


def test_ood_reviews_are_balanced_per_kind():
    rows = _ood_rows()
    assert len(rows) >= 120
    assert [r["id"] for r in rows] == [f"o{i:03d}" for i in range(1, len(rows) + 1)]
    assert {r["kind"] for r in rows} == OOD_KINDS
    assert {r["label"] for r in rows} == {0, 1}
    for kind in OOD_KINDS:
        part = [r for r in rows if r["kind"] == kind]
        assert len(part) >= 20 and sum(r["label"] for r in part) * 2 == len(part), kind


def test_ood_reviews_are_ascii_and_long_kind_is_long():
    rows = _ood_rows()
    assert all(r["text"].isascii() and r["text"] == r["text"].strip() for r in rows)
    assert all(60 <= len(r["text"].split()) <= 140 for r in rows if r["kind"] == "long")


def test_ood_reviews_have_no_near_duplicates_within_or_against_bundled():
    ood = [_tokens(r["text"]) for r in _ood_rows()]
    bundled = [_tokens(r["text"]) for r in load_jsonl(data_path("reviews.jsonl"), ["text"])]
    within = max(len(a & b) / len(a | b) for a, b in combinations(ood, 2))
    across = max(len(a & b) / len(a | b) for a in ood for b in bundled)
    assert within <= 0.5 and across <= 0.5, (within, across)


def test_rare_vocab_reviews_use_sentiment_words_absent_from_training():
    vocab = _train_vocab()
    assert not RARE_SENTIMENT_WORDS & vocab
    for r in _ood_rows():
        if r["kind"] == "rare_vocab":
            assert len(_tokens(r["text"]) & RARE_SENTIMENT_WORDS) >= 3, r["id"]


def test_unmarked_irony_has_no_irony_markers():
    markers = re.compile(r"""[!"]|/s\b|\b(sure|yeah|oh|right|wow)\b""", re.I)
    for r in _ood_rows():
        if r["kind"] == "unmarked_irony":
            assert not markers.search(r["text"]), r["id"]


def test_load_ood_reviews_has_text_label_kind():
    ds = load_ood_reviews()
    assert ds.column_names == ["text", "label", "kind"]
    assert ds.features["label"].names == load_reviews(use_hub=False)["train"].features["label"].names
    assert ds.num_rows >= 120 and sum(ds["label"]) * 2 == ds.num_rows
    assert set(ds["kind"]) == OOD_KINDS


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('\ufeff{"a": 1}\n{"a": 2}\n'.encode("utf-8"))  # as Windows Notepad saves UTF-8
    assert load_jsonl(path, {"a": int}) == [{"a": 1}, {"a": 2}]
