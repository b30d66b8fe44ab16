"""Does curation pay? The same LoRA SFT on curated and raw records, answers scored by curation's detectors and a stop check (第 6 章, notebooks/06_instruction_data.ipynb)."""

from __future__ import annotations

import copy
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from peft import get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .data import IGNORE_INDEX, DataFormatError, data_path, load_jsonl
from .instruction_data import (
    CurationConfig,
    count_words,
    find_pii,
    format_problems,
    looks_like_spam,
    quality_score,
)
from .record_formats import sft_example
from .timing import timed_call

# A first-person negated modal or an apology-then-"but" near the start: it has false alarms ("I will not miss a
# day") and misses ("I don't have the capability to ..."), so read what it flags.
_APOS = "['\u2019]"  # straight or typographic apostrophe
REFUSAL = re.compile(
    rf"\b(?:I|we)(?: really)? (?:can{_APOS}t|cannot|can not|won{_APOS}t|will not|am not able to|am unable to|"
    rf"must decline to|shouldn{_APOS}t)\b"
    rf"|\bI{_APOS}m (?:not able|unable) to\b|\bI{_APOS}m sorry, but\b|\bI apologi[sz]e, but\b",
    flags=re.I,
)
FLAGS = ("format", "pii", "too_short", "no_stop", "off_topic")
HELDOUT_FIELDS = {"id": str, "source": str, "kind": str, "question": str}
HELDOUT_KINDS = ("ordinary", "unsafe")


def heldout_questions(path=None) -> dict[str, list[str]]:
    """The held-out questions of heldout_questions.jsonl (or `path`) by kind: {'ordinary': [...], 'unsafe': [...]}."""
    path = path or data_path("heldout_questions.jsonl")
    records = load_jsonl(path, HELDOUT_FIELDS)
    lines = [n for n, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if text.strip()]
    by_kind = {kind: [] for kind in HELDOUT_KINDS}
    for line, record in zip(lines, records, strict=True):
        if record["kind"] not in by_kind:
            raise DataFormatError(f"{path}:{line}: field 'kind' is {record['kind']!r}; valid: {', '.join(HELDOUT_KINDS)}")
        by_kind[record["kind"]].append(record["question"])
    return by_kind


def qa_messages(record: dict) -> list[dict]:
    """A question/answer record as one user turn and one assistant turn (the chat template adds the system turn)."""
    return [{"role": "user", "content": record["question"]}, {"role": "assistant", "content": record["answer"]}]


def qa_examples(tokenizer, records: list[dict], max_seq_len: int) -> tuple[list[dict], int]:
    """Chat-template examples cut to max_seq_len tokens -> (examples, how many were cut).

    Cutting keeps the prompt and the start of the answer; a cut answer loses its <|im_end|>, so the model sees an
    answer that never ends.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    examples, cut = [], 0
    for record in records:
        ex = sft_example(tokenizer, qa_messages(record))
        cut += len(ex["input_ids"]) > max_seq_len
        ids, labels = ex["input_ids"][:max_seq_len], ex["labels"][:max_seq_len]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return examples, cut


def lora_sft(model, tokenizer, records: list[dict], lora_config, *, steps: int, batch_size: int,
             learning_rate: float, max_seq_len: int, warmup_steps: int = 2, seed: int = 0):
    """LoRA SFT of a copy of `model` on `records` for exactly `steps` optimizer steps -> (peft model, result dict).

    Trainer's own AdamW, cosine schedule after `warmup_steps`, batches drawn by a seeded shuffle (an epoch's last batch
    may be smaller); `model` is untouched. The result counts the records actually drawn and the distinct ones seen.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    examples, cut = qa_examples(tokenizer, records, max_seq_len)
    if not any(label != IGNORE_INDEX for ex in examples for label in ex["labels"]):
        raise ValueError(f"none of the {len(records)} records keeps an answer token within max_seq_len={max_seq_len}")
    peft_model = get_peft_model(copy.deepcopy(model), copy.deepcopy(lora_config))
    batches = []  # the record indices of every collated batch, in order (the loader may collate one ahead)
    pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)

    def collate(features):
        batches.append([f["index"] for f in features])
        return pad([{k: v for k, v in f.items() if k != "index"} for f in features])

    with tempfile.TemporaryDirectory(prefix="sft_lessons_") as out_dir:
        args = TrainingArguments(
            output_dir=out_dir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_steps,
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            remove_unused_columns=False,  # keep "index" for the count of records drawn
            use_cpu=model.device.type == "cpu",
        )
        indexed = [dict(ex, index=i) for i, ex in enumerate(examples)]
        trainer = Trainer(model=peft_model, args=args, train_dataset=indexed, data_collator=collate)
        trainer.remove_callback(PrinterCallback)  # no per-step log dicts in the notebook
        seconds, _ = timed_call(trainer.train)
    peft_model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    drawn = [i for batch in batches[:steps] for i in batch]  # one batch per optimizer step
    return peft_model, {"records": len(records), "cut": cut, "steps": trainer.state.global_step, "drawn": len(drawn),
                        "distinct": len(set(drawn)), "epochs": len(drawn) / len(records), "seconds": seconds,
                        "loss": losses}


def chat_prompts(tokenizer, questions: list[str]) -> list[str]:
    """Each question rendered by the chat template as a user turn, ending with the assistant header."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def refuses(text: str) -> bool:
    """True if REFUSAL matches in the first 200 characters ('I can't help with that', 'I won't explain ...')."""
    return REFUSAL.search(text[:200]) is not None


def repeated_phrase(text: str, n: int = 8, times: int = 3) -> bool:
    """True if some run of n words occurs `times` times or more: the loop of a model that cannot stop."""
    words = re.findall(r"\w+", text.lower())
    runs = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(runs) and max(runs.values()) >= times


def answer_flags(text: str, stopped: bool, relevance: float | None = None,
                 config: CurationConfig | None = None) -> dict[str, bool]:
    """Curation's detectors applied to one generated answer: True where the answer has that problem.

    format: any of format_problems (HTML, entities, BBCode, mojibake, signatures, EDIT lines, stray whitespace, Markdown
    debris, unclosed ```, ** or __; the unclosed ones only if the answer ended); pii: an email, phone, address or birth date;
    too_short: under config.min_words words; no_stop: no end marker within the token budget (a rambling answer);
    off_topic: spam, or question-answer relevance under config.min_relevance (when given).
    """
    config = config or CurationConfig()
    problems = [p for p in format_problems(text) if stopped or p != "unbalanced_markup"]  # cut inside ``` or **
    off_topic = looks_like_spam(text) or (relevance is not None and relevance < config.min_relevance)
    return {"format": bool(problems), "pii": bool(find_pii(text)),
            "too_short": count_words(text) < config.min_words, "no_stop": not stopped, "off_topic": off_topic}


def score_answers(questions: list[str], generations: list[dict], relevance=None,
                  config: CurationConfig | None = None) -> dict[str, np.ndarray]:
    """Per answer: each flag of answer_flags, 'any' of them, 'repeats' (repeated_phrase, not in 'any'), 'quality'
    (quality_score) and 'words' -> arrays of length n.

    generations: generate_responses's [{'text', 'stopped', ...}]; relevance: a function(questions, answers) -> scores.
    """
    if len(questions) != len(generations):
        raise ValueError(f"{len(questions)} questions but {len(generations)} generations")
    texts = [g["text"] for g in generations]
    sims = list(relevance(questions, texts)) if relevance is not None else [None] * len(texts)
    rows = [answer_flags(t, g["stopped"], s, config) for t, g, s in zip(texts, generations, sims, strict=True)]
    out = {flag: np.array([r[flag] for r in rows]) for flag in FLAGS}
    out["any"] = np.any([out[f] for f in FLAGS], axis=0)
    out["repeats"] = np.array([repeated_phrase(t) for t in texts])
    out["quality"] = np.array([quality_score(q, t, s) for q, t, s in zip(questions, texts, sims, strict=True)])
    out["words"] = np.array([count_words(t) for t in texts])
    return out
