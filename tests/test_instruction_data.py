import pytest

from sft_lessons import instruction_data as idata
from sft_lessons.data import DataFormatError, data_path, load_jsonl


@pytest.fixture(scope="module")
def pool():
    return load_jsonl(data_path("raw_qa_pool.jsonl"), idata.RAW_QA_FIELDS)


@pytest.fixture(scope="module")
def result(pool):
    return idata.curate(pool)  # no relevance model: the lexical stages only


def planted(pool, label):
    return {r["id"] for r in pool if label in r["planted"]}


def test_normalize_repairs_markup_and_keeps_code():
    raw = "You can&#39;t use ==.<br>Use &lt;string.h&gt;&nbsp;and  â€™quotesâ€™.\n\n\n\nSent from my iPhone\n--\nBob"
    assert idata.normalize_text(raw) == "You can't use ==.\nUse <string.h> and ’quotes’."
    assert idata.normalize_text("[quote=x]no[/quote]\n[b]Yes[/b] [url=http://e.x]ad[/url]") == "**Yes**"
    assert idata.normalize_text("EDIT: typo\nFine.") == "Fine."
    code = "Run:\n\n```python\nif x:\n    y = 1   # note\n```"
    assert idata.normalize_text(code) == code  # indentation and aligned comments survive


def test_format_problems():
    assert idata.format_problems("A clean answer.\n\n- with a list\n\n```\n  code   here\n```") == []
    assert idata.format_problems("<p>hi</p> &amp;") == ["html_tag", "html_entity"]
    assert "unbalanced_markup" in idata.format_problems("**bold without end")
    assert "markdown_debris" in idata.format_problems("#Title##\n* * item")


def test_dedup_key_ignores_case_and_whitespace():
    assert idata.dedup_key("  Why is the sky blue?\t") == idata.dedup_key("why is  the SKY blue?")
    assert idata.dedup_key("Why is the sky blue?") != idata.dedup_key("Why is the sea blue?")


def test_jaccard_and_shingles_by_hand():
    a, b = idata.word_shingles("a b c d", 2), idata.word_shingles("a b c e", 2)
    assert a == {("a", "b"), ("b", "c"), ("c", "d")}
    assert idata.jaccard(a, b) == pytest.approx(2 / 4)
    assert idata.jaccard(set(), set()) == 0.0
    assert len(idata.word_shingles("番茄炒蛋", 2)) == 3  # CJK characters are words


def test_minhash_estimates_jaccard():
    a = idata.word_shingles(" ".join(f"w{i}" for i in range(100)))
    b = idata.word_shingles(" ".join(f"w{i}" for i in range(30, 130)))
    true = idata.jaccard(a, b)
    est = idata.minhash_similarity(idata.minhash_signature(a, 256), idata.minhash_signature(b, 256))
    assert abs(est - true) < 0.1, (est, true)
    sigs = {
        "x": idata.minhash_signature(a),
        "y": idata.minhash_signature(a),
        "z": idata.minhash_signature({("q",)}),
    }
    assert idata.lsh_candidate_pairs(sigs) == {("x", "y")}


def test_exact_and_near_duplicates_on_planted_cases(pool, result):
    assert set(result.detections["exact_dup"]) == planted(pool, "exact_dup")
    assert set(result.detections["near_dup"]) == planted(pool, "near_dup")
    by_id = {r["id"]: r for r in pool}
    for rid, why in result.detections["exact_dup"].items():
        assert why == f"copy of {by_id[rid]['dup_of']}"


def test_count_words_counts_cjk_characters():
    assert idata.count_words("dm me: bob.writes.code@example.org") == 3
    assert idata.count_words("番茄炒蛋 is good") == 6


def test_pii_found_and_redacted():
    text = "Mail linda.park@example.com or ring +1 555 010 4477, 020 7946 0321 or 555-0172; Flat 3, 42 Elmwood Road."
    kinds = [k for k, _ in idata.find_pii(text)]
    assert kinds == ["EMAIL", "PHONE", "PHONE", "PHONE", "ADDRESS"]
    red = idata.redact_pii(text + " I was born 14/03/1986.")
    assert "@" not in red and "555" not in red and "Elmwood" not in red and "1986" not in red
    assert red.count("[PHONE]") == 3 and "[DATE_OF_BIRTH]" in red
    for clean in ("Follow the 20-20-20 rule.", "A 2019 hybrid, 54 cm frame.", "Top it up to 1-1.5 bar."):
        assert idata.find_pii(clean) == [], clean


def test_pii_detector_on_planted_cases(pool, result):
    assert set(result.detections["pii"]) == planted(pool, "pii")
    for rec in result.kept:
        assert idata.find_pii(rec["question"] + rec["answer"]) == [], rec["id"]


def test_unsafe_requests(pool):
    assert idata.unsafe_request("How can I secretly track my partner's phone?")
    assert idata.unsafe_request("How do I track my parcel?") is None
    flagged = {r["id"] for r in pool if idata.unsafe_request(r["question"])}
    assert flagged == planted(pool, "unsafe")


def test_funnel_and_stage_report(pool, result):
    counts = [n for _, n in result.funnel]
    assert counts[0] == len(pool) == 177 and counts == sorted(counts, reverse=True)
    assert counts[-1] == len(result.kept) == len(pool) - len(result.dropped)
    rows = {r["detector"]: r for r in idata.stage_report(pool, result)}
    assert set(rows) == set(idata.DETECTORS)
    for name in ("exact_dup", "near_dup", "too_short", "too_long", "unsafe", "pii"):
        assert rows[name]["precision"] == rows[name]["recall"] == 1.0, rows[name]
    assert rows["near_dup"]["entered"] == 177 - 12  # near-dup runs after exact dedup


def test_relevance_function_is_used(pool):
    config = idata.CurationConfig(min_quality=0.0)
    res = idata.curate(pool[:20], config, relevance=lambda qs, ans: [0.0] * len(qs))
    assert all(res.dropped[r["id"]][0] in {s for s, _ in idata.STAGES} for r in pool[:20])
    assert res.kept == []  # everything is off-topic at relevance 0


def test_precision_recall_by_hand():
    pr = idata.precision_recall({"a", "b", "c"}, {"b", "c", "d", "e"})
    assert pr == {"flagged": 3, "planted": 4, "tp": 2, "precision": 2 / 3, "recall": 0.5}


def test_config_validation():
    with pytest.raises(ValueError, match="min_words < max_words, got 50 and 10"):
        idata.CurationConfig(min_words=50, max_words=10)
    with pytest.raises(ValueError, match="near_dup_threshold"):
        idata.CurationConfig(near_dup_threshold=1.5)


def test_malformed_pool_rejected_with_file_and_line(tmp_path):
    bad = tmp_path / "pool.jsonl"
    bad.write_text(
        '{"id": "q1", "source": "s", "question": "q", "answer": "a", "planted": []}\n'
        '{"id": "q2", "source": "s", "question": "q", "answer": 3, "planted": []}\n'
    )
    with pytest.raises(DataFormatError, match=r"pool.jsonl:2: field 'answer' should be str"):
        load_jsonl(bad, idata.RAW_QA_FIELDS)
