"""Curating instruction data LIMA-style (第 6 章, notebooks/06_instruction_data.ipynb).

Normalise, deduplicate, filter, redact PII, score, and count the funnel.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .models import mean_pool

RAW_QA_FIELDS = {"id": str, "source": str, "question": str, "answer": str, "planted": list}

# ---- normalisation ----------------------------------------------------------------------------------------------

_MOJIBAKE = {
    "â€™": "’",
    "â€˜": "‘",
    "â€œ": "“",
    "â€\x9d": "”",
    "â€”": "—",
    "â€“": "–",
    "Ã©": "é",
    "Â ": " ",
    "â€": "”",
}
_FORMAT_CHECKS = {
    "html_tag": re.compile(r"</?(?:p|br|b|i|a|div|span|em|strong)\b[^>]*>", re.I),
    "html_entity": re.compile(r"&(?:#\d+|[a-z]+);", re.I),
    "bbcode": re.compile(r"\[/?(?:b|i|u|quote|url|img|code)(?:=[^\]]*)?\]", re.I),
    "mojibake": re.compile("|".join(map(re.escape, _MOJIBAKE))),
    "signature": re.compile(r"^(?:--\s*|Sent from my .*)$", re.M),
    "edit_note": re.compile(r"^EDIT\d*:", re.M),
    "whitespace": re.compile(r"\S {3,}\S|[ \t]+\n|\n{3,}|\t"),
    "markdown_debris": re.compile(r"^#{1,6}[^#\s].*#\s*$|^\* \*|^(\d\))\s*\1", re.M),
}


def _without_code(text: str) -> str:
    """`text` minus fenced code blocks, whose spacing and symbols are meant to be there."""
    return re.sub(r"```.*?```", "<code>", text, flags=re.S)


def format_problems(text: str) -> list[str]:
    """Names of the formatting problems found in `text` (empty list = clean)."""
    prose = _without_code(text)
    found = [name for name, pattern in _FORMAT_CHECKS.items() if pattern.search(prose)]
    if text.count("```") % 2 or text.count("**") % 2 or len(re.findall(r"(?<!_)__(?!_)", text)) % 2:
        found.append("unbalanced_markup")
    return found


def normalize_text(text: str) -> str:
    """Repair what can be repaired: mojibake, HTML/BBCode, quotes of others, signatures, edit notes, whitespace."""
    for bad, good in _MOJIBAKE.items():
        text = text.replace(bad, good)
    text = re.sub(
        r"<a\b[^>]*>.*?</a>|\[url=[^\]]*\].*?\[/url\]|\[img\].*?\[/img\]", "", text, flags=re.I | re.S
    )
    text = re.sub(r"<br\s*/?>|</p>", "\n", text, flags=re.I)
    text = re.sub(r"</?[a-z][^>]*>", "", text, flags=re.I)  # tags first: &lt;string.h&gt; is text, not a tag
    text = html.unescape(html.unescape(text)).replace("\xa0", " ")
    text = re.sub(r"\[quote[^\]]*\].*?\[/quote\]", "", text, flags=re.I | re.S)  # someone else's words
    text = re.sub(r"\[b\](.*?)\[/b\]", r"**\1**", text, flags=re.I | re.S)
    text = _FORMAT_CHECKS["bbcode"].sub("", text)  # stray or unpaired tags
    text = re.split(r"^(?:--\s*|Sent from my .*)$", text, maxsplit=1, flags=re.M)[0]
    text = re.sub(r"^EDIT\d*:.*\n?", "", text, flags=re.M)
    text = unicodedata.normalize("NFKC", text)
    parts = re.split(r"(```.*?```)", text, flags=re.S)  # odd parts are code blocks: leave their spacing alone
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", parts[i])  # runs inside a line, not indentation
        parts[i] = re.sub(r"[ \t]+\n", "\n", parts[i])
    return re.sub(r"\n{3,}", "\n\n", "".join(parts)).strip()


# ---- exact and near-duplicate detection --------------------------------------------------------------------------


def dedup_key(text: str) -> str:
    """sha256 of the text after NFKC, casefolding and whitespace collapsing."""
    canon = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def exact_duplicates(records: list[dict], key: Callable[[dict], str]) -> dict[str, str]:
    """{id: id of the first record with the same dedup_key(key(record))} for every later copy."""
    first, dups = {}, {}
    for rec in records:
        digest = dedup_key(key(rec))
        if digest in first:
            dups[rec["id"]] = first[digest]
        else:
            first[digest] = rec["id"]
    return dups


def word_shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` (lowercased; CJK characters count as words)."""
    words = re.findall(r"[\u4e00-\u9fff]|[^\W_]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (0.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 0.0


_PRIME = (1 << 61) - 1


def minhash_signature(shingles: Iterable, num_perm: int = 128, seed: int = 0):
    """(num_perm,) uint64 MinHash signature: min over shingles of (a*h + b) mod p for num_perm random (a, b)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64).astype(object)
    b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64).astype(object)
    hashes = [
        int.from_bytes(hashlib.blake2b(repr(s).encode(), digest_size=8).digest(), "little") for s in shingles
    ]
    h = np.array(hashes or [0], dtype=object)[:, None]  # (S, 1); Python ints avoid uint64 overflow
    return ((h * a + b) % _PRIME).min(axis=0).astype(np.uint64)  # (num_perm,)


def minhash_similarity(sig_a, sig_b) -> float:
    """Estimated Jaccard similarity: the fraction of equal signature slots."""
    return float((sig_a == sig_b).mean())


def lsh_candidate_pairs(signatures: dict[str, object], bands: int = 32) -> set[tuple[str, str]]:
    """Pairs of ids whose signatures agree on every row of at least one band (locality-sensitive hashing)."""
    buckets: dict[tuple, list[str]] = {}
    for rid, sig in signatures.items():
        rows = len(sig) // bands
        for band in range(bands):
            buckets.setdefault((band, sig[band * rows : (band + 1) * rows].tobytes()), []).append(rid)
    return {
        (ids[i], ids[j]) for ids in buckets.values() for i in range(len(ids)) for j in range(i + 1, len(ids))
    }


def near_duplicates(
    records: list[dict], key: Callable[[dict], str], threshold: float = 0.5, num_perm: int = 128
) -> dict[str, tuple[str, float]]:
    """{id: (id of the earlier record, Jaccard)} for pairs found by MinHash-LSH and confirmed by exact Jaccard."""
    shingles = {r["id"]: word_shingles(key(r)) for r in records}
    signatures = {rid: minhash_signature(s, num_perm) for rid, s in shingles.items()}
    order = {r["id"]: i for i, r in enumerate(records)}
    dups: dict[str, tuple[str, float]] = {}
    for a, b in sorted(lsh_candidate_pairs(signatures), key=lambda p: (order[p[0]], order[p[1]])):
        first, later = sorted((a, b), key=order.get)
        sim = jaccard(shingles[first], shingles[later])
        if sim >= threshold and later not in dups and first not in dups:
            dups[later] = (first, sim)
    return dups


# ---- length, PII, safety, relevance ------------------------------------------------------------------------------


def count_words(text: str) -> int:
    """Whitespace-separated words plus CJK characters (Chinese has no spaces, so each character counts as one)."""
    return len(re.findall(r"[\u4e00-\u9fff]|[^\s\u4e00-\u9fff]+", text))


PII_PATTERNS = {
    "EMAIL": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    "PHONE": re.compile(r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(?\d{2,4}\)?[ .-]?){1,3}\d{4}(?![\w-])"),
    "ADDRESS": re.compile(
        r"\b(?:Flat \d+, )?\d{1,4} [A-Z][a-z]+ (?:Road|Lane|Street|Avenue|Drive|Way|Close)\b"
    ),
    "DATE_OF_BIRTH": re.compile(r"\bborn (?:on )?\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"),
}


def find_pii(text: str) -> list[tuple[str, str]]:
    """[(kind, matched text)] for every PII match; phone matches need at least 7 digits."""
    found = []
    for kind, pattern in PII_PATTERNS.items():
        for m in pattern.finditer(text):
            if kind == "PHONE" and sum(c.isdigit() for c in m.group()) < 7:
                continue
            found.append((kind, m.group()))
    return found


def redact_pii(text: str) -> str:
    """`text` with every PII match replaced by a placeholder such as [EMAIL] or [PHONE]."""
    for kind, value in sorted(find_pii(text), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"[{kind}]")
    return text


UNSAFE_PATTERNS = [
    r"\bweapon\b",
    r"\bsecretly\b|without (?:her|him|them) knowing",
    r"get into (?:her|his|their|someone'?s) account",
    r"\bfake (?:doctor'?s )?note\b|\bforge\b",
    r"without (?:seeing )?a doctor|without a prescription",
    r"open (?:my )?neighbou?r'?s .*lock",
]


def unsafe_request(question: str) -> str | None:
    """The first unsafe-request pattern that matches the question, or None (a tiny lexicon, not a classifier)."""
    for pattern in UNSAFE_PATTERNS:
        if re.search(pattern, question, flags=re.I):
            return pattern
    return None


SPAM_PATTERNS = r"subscribe|use code|% off|click here|whatsapp|order here|\bbump\b|\bdm me\b|https?://"


def looks_like_spam(text: str) -> bool:
    """Advertising, link-dropping or thread noise ('bump')."""
    return re.search(SPAM_PATTERNS, text, flags=re.I) is not None


# ---- quality score ------------------------------------------------------------------------------------------------

_CHATTER = r"\b(?:lol|idk|honestly|ok so|oh man|i think|trust me|bear with)\b|!!+"


def quality_score(question: str, answer: str, relevance: float | None = None) -> float:
    """A 0..1 heuristic: length in the useful band, structure, no chatter or shouting, on-topic (if given)."""
    words = count_words(answer)
    length = min(1.0, words / 40) * (1.0 if words <= 250 else max(0.0, 1 - (words - 250) / 250))
    structure = 1.0 if re.search(r"^\s*(?:[-*]|\d+[.)])\s|```|\n\n", answer, flags=re.M) else 0.6
    chatter = len(re.findall(_CHATTER, answer, flags=re.I))
    shouting = sum(c.isupper() for c in answer) / max(1, sum(c.isalpha() for c in answer)) > 0.3
    style = max(0.0, 1.0 - 0.25 * chatter - 0.5 * shouting - 0.5 * looks_like_spam(answer))
    parts = [length, structure, style] + ([max(0.0, min(1.0, relevance))] if relevance is not None else [])
    return round(float(sum(parts) / len(parts)), 4)


# ---- the pipeline -------------------------------------------------------------------------------------------------


@dataclass
class CurationConfig:
    """Thresholds of the curation pipeline (defaults sized for the bundled raw_qa_pool.jsonl)."""

    min_words: int = 5  # answers shorter than this say nothing
    max_words: int = 300  # rambling answers; LIMA kept Stack Exchange answers of 1,200-4,096 characters
    near_dup_threshold: float = 0.5  # Jaccard of word 3-gram shingles
    min_relevance: float = 0.29  # question-answer cosine similarity (when a relevance function is given)
    min_quality: float = 0.7  # final score cut, chosen by looking at this pool (so optimistic)

    def __post_init__(self):
        if not 0 < self.min_words < self.max_words:
            raise ValueError(f"need 0 < min_words < max_words, got {self.min_words} and {self.max_words}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")


DETECTORS = ("exact_dup", "near_dup", "too_short", "too_long", "bad_format", "off_topic", "unsafe", "pii")


def detect(
    records: list[dict],
    config: CurationConfig | None = None,
    relevance: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, dict[str, str]]:
    """{detector: {id: why}}: every detector on every record (near_dup after exact dedup), named like the labels."""
    config = config or CurationConfig()
    norm = [
        dict(r, question=normalize_text(r["question"]), answer=normalize_text(r["answer"])) for r in records
    ]
    both = lambda r: r["question"] + "\n" + r["answer"]  # noqa: E731
    exact = exact_duplicates(norm, both)
    near = near_duplicates([r for r in norm if r["id"] not in exact], both, config.near_dup_threshold)
    words = {r["id"]: count_words(r["answer"]) for r in norm}
    scores = (
        dict(zip(words, relevance([r["question"] for r in norm], [r["answer"] for r in norm]), strict=True))
        if relevance
        else {}
    )
    found = {
        "exact_dup": {k: f"copy of {v}" for k, v in exact.items()},
        "near_dup": {k: f"Jaccard {s:.2f} with {v}" for k, (v, s) in near.items()},
        "too_short": {k: f"{n} words" for k, n in words.items() if n < config.min_words},
        "too_long": {k: f"{n} words" for k, n in words.items() if n > config.max_words},
        "bad_format": {r["id"]: ", ".join(p) for r in records if (p := format_problems(r["answer"]))},
        "off_topic": {k: f"relevance {s:.2f}" for k, s in scores.items() if s < config.min_relevance},
        "unsafe": {r["id"]: f"matches {p!r}" for r in norm if (p := unsafe_request(r["question"]))},
        "pii": {r["id"]: ", ".join(sorted({k for k, _ in f})) for r in records if (f := find_pii(both(r)))},
    }
    found["off_topic"].update({r["id"]: "spam" for r in norm if looks_like_spam(r["answer"])})
    for r in norm:
        r["quality"] = quality_score(r["question"], r["answer"], scores.get(r["id"]))
    found["_normalized"] = {r["id"]: r for r in norm}  # type: ignore[assignment]
    found["_relevance"] = scores  # type: ignore[assignment]
    return found


# Funnel stages in order: (stage, detectors whose hits the stage drops). PII is redacted, not dropped.
STAGES = (
    ("exact_dup", ("exact_dup",)),
    ("near_dup", ("near_dup",)),
    ("length", ("too_short", "too_long")),
    ("format", ("unrepairable_format",)),
    ("off_topic", ("off_topic",)),
    ("unsafe", ("unsafe",)),
    ("quality", ("low_quality",)),
)


@dataclass
class CurationResult:
    """Kept (normalised, redacted, scored) records, the funnel counts and why each dropped record went."""

    kept: list[dict]
    funnel: list[tuple[str, int]]
    dropped: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (stage, why)
    detections: dict[str, dict[str, str]] = field(default_factory=dict)  # detector -> {id: why}
    relevance: dict[str, float] = field(default_factory=dict)  # id -> question-answer relevance, if scored


def curate(
    records: list[dict],
    config: CurationConfig | None = None,
    relevance: Callable[[list[str], list[str]], list[float]] | None = None,
) -> CurationResult:
    """Normalise, then drop by stage (dups, length, broken format, off-topic, unsafe, low quality), redact PII."""
    config = config or CurationConfig()
    found = detect(records, config, relevance)
    norm, scores = found.pop("_normalized"), found.pop("_relevance")
    found["unrepairable_format"] = {
        k: ", ".join(p) for k, r in norm.items() if (p := format_problems(r["answer"]))
    }
    found["low_quality"] = {
        k: f"score {r['quality']:.2f}" for k, r in norm.items() if r["quality"] < config.min_quality
    }
    pool = [norm[r["id"]] for r in records]
    result = CurationResult(kept=[], funnel=[("raw", len(pool))], detections=found, relevance=scores)
    for stage, detectors in STAGES:
        for rec in pool:
            why = next((f"{d}: {found[d][rec['id']]}" for d in detectors if rec["id"] in found[d]), None)
            if why:
                result.dropped[rec["id"]] = (stage, why)
        pool = [r for r in pool if r["id"] not in result.dropped]
        result.funnel.append((stage, len(pool)))
    for rec in pool:
        rec["question"], rec["answer"] = redact_pii(rec["question"]), redact_pii(rec["answer"])
    result.kept = pool
    return result


STAGE_OF = {"too_short": "length", "too_long": "length", "bad_format": "format", "pii": "redact"}


def stage_report(records: list[dict], result: CurationResult) -> list[dict]:
    """Per detector: precision and recall against the planted labels, on the records that reached its stage."""
    stage_names = [s for s, _ in STAGES]
    rows = []
    for det in DETECTORS:
        stage = STAGE_OF.get(det, det)
        k = stage_names.index(stage) if stage in stage_names else len(stage_names)
        entered = [r for r in records if result.dropped.get(r["id"], ("", ""))[0] not in stage_names[:k]]
        ids = {r["id"] for r in entered}
        positives = {r["id"] for r in entered if det in r["planted"]}
        pr = precision_recall(set(result.detections[det]) & ids, positives)
        rows.append({"detector": det, "stage": stage, "entered": len(entered), **pr})
    return rows


def precision_recall(flagged: Iterable[str], positives: Iterable[str]) -> dict[str, float | int]:
    """Precision, recall and the confusion counts of a set of flagged ids against the planted positive ids."""
    flagged, positives = set(flagged), set(positives)
    tp = len(flagged & positives)
    return {
        "flagged": len(flagged),
        "planted": len(positives),
        "tp": tp,
        "precision": tp / len(flagged) if flagged else 1.0,
        "recall": tp / len(positives) if positives else 1.0,
    }


def embedding_relevance(encoder, tokenizer, batch_size: int = 32, max_length: int = 128):
    """A relevance function for curate(): cosine similarity of question and answer sentence embeddings."""

    def relevance(questions: list[str], answers: list[str]) -> list[float]:
        def embed(texts):
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
            out = [None] * len(texts)
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(encoder.device)
                with torch.no_grad():
                    emb = mean_pool(
                        encoder(**batch).last_hidden_state, batch["attention_mask"]
                    )  # (b, hidden)
                for i, e in zip(idx, torch.nn.functional.normalize(emb, dim=-1), strict=True):
                    out[i] = e
            return torch.stack(out)  # (n, hidden)

        return (embed(questions) * embed(answers)).sum(-1).tolist()

    return relevance
