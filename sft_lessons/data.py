"""Bundled datasets, a strict JSONL reader, and IGNORE_INDEX (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from .settings import use_hub as _use_hub

IGNORE_INDEX = -100  # the label the loss skips: torch.nn.CrossEntropyLoss's default ignore_index

DATA_DIR = Path(__file__).parent / "data"
REVIEW_FIELDS = {"id": str, "text": str, "label": int, "style": str, "genre": str, "split": str}
OOD_REVIEW_FIELDS = {"id": str, "text": str, "label": int, "kind": str}
REVIEW_LABELS = ["neg", "pos"]  # ClassLabel names shared by load_reviews and load_ood_reviews


class DataFormatError(ValueError):
    """A data file is malformed; the message names file:line and the problem."""


def data_path(name: str) -> Path:
    """Path of a bundled data file, e.g. data_path('reviews.jsonl')."""
    path = DATA_DIR / name
    if not path.is_file():
        have = ", ".join(sorted(p.name for p in DATA_DIR.glob("*.jsonl")))
        raise FileNotFoundError(f"no bundled data file {name!r}; bundled: {have}")
    return path


def _type_name(t) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def load_jsonl(path, required_fields: Mapping[str, type] | Iterable[str] = ()) -> list[dict]:
    """Records of a JSONL file; raises DataFormatError('file:line: problem') on bad JSON, missing field or wrong type."""
    path = Path(path)
    fields = dict(required_fields) if isinstance(required_fields, Mapping) else dict.fromkeys(required_fields)
    records = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark from a Windows editor is skipped
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
            for key, typ in fields.items():
                if key not in record:
                    raise DataFormatError(f"{where}: missing field {key!r}")
                value = record[key]
                # bool is a subclass of int; a label of `true` is still a type error.
                if typ is not None and (
                    not isinstance(value, typ) or (typ is int and isinstance(value, bool))
                ):
                    raise DataFormatError(
                        f"{where}: field {key!r} should be {_type_name(typ)}, got {type(value).__name__} ({value!r:.40})"
                    )
            records.append(record)
    return records


def load_reviews(use_hub: bool | None = None):
    """DatasetDict with the fixed 'train'/'test' split and IMDB's columns: text, label (0 neg, 1 pos)."""
    if use_hub if use_hub is not None else _use_hub():
        imdb = load_dataset("imdb")
        return DatasetDict(train=imdb["train"], test=imdb["test"])
    records = load_jsonl(data_path("reviews.jsonl"), REVIEW_FIELDS)
    features = Features({"text": Value("string"), "label": ClassLabel(names=REVIEW_LABELS)})
    splits = {}
    for split in ("train", "test"):
        rows = [r for r in records if r["split"] == split]
        splits[split] = Dataset.from_dict(
            {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}, features=features
        )
    return DatasetDict(splits)


def load_ood_reviews():
    """Dataset of the out-of-distribution test reviews (text, label, kind); report on it, never choose with it."""
    records = load_jsonl(data_path("reviews_ood.jsonl"), OOD_REVIEW_FIELDS)
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=REVIEW_LABELS), "kind": Value("string")}
    )
    return Dataset.from_dict({key: [r[key] for r in records] for key in features}, features=features)
