"""Measuring what SFT changed: house style, clean stops, batched generation, perplexity (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb)."""

from __future__ import annotations

import math
import re

import torch
from transformers import StoppingCriteria

from .data import IGNORE_INDEX
from .padding import trim_padding

ANSWER_LINE = re.compile(r" ?Answer: ([^\n]+)\.")  # line 1: " Answer: <one sentence>." (chat: no leading space)
POINT_LINE = re.compile(r"- (\S.*)")  # lines 2-4: "- <point>"
HOUSE_STYLE_REGEX = r"^ ?Answer: [^\n]+\.(?:\n- \S[^\n]*[^.\s]){1,3}$"  # structure only (data card)


def house_style_problems(text: str) -> list[str]:
    """What breaks the data card's house style in `text` (an answer: raw text after 'Assistant:', or a chat message);
    [] if it complies."""
    problems = []
    if "Human:" in text or "Assistant:" in text:
        problems.append("contains another turn ('Human:' or 'Assistant:')")
    if "\r" in text or "\n\n" in text or text != text.strip("\n"):
        problems.append("blank line, carriage return, or leading/trailing newline")
    lines = text.split("\n")
    if any(line != line.rstrip() for line in lines):
        problems.append("trailing whitespace")
    if not 2 <= len(lines) <= 4:
        problems.append(f"{len(lines)} lines; expected 2-4 (the answer and 1-3 points)")
    answer = ANSWER_LINE.fullmatch(lines[0])
    if answer is None:
        problems.append(f"line 1 is not 'Answer: <sentence>.': {lines[0][:40]!r}")
    else:
        sentence = answer.group(1)
        if not 8 <= len(sentence.split()) <= 30:
            problems.append(f"answer sentence has {len(sentence.split())} words; expected 8-30")
        if any(mark in sentence for mark in (". ", "? ", "! ")) or sentence.endswith((".", "?", "!")):
            problems.append("line 1 holds more than one sentence")
    for number, line in enumerate(lines[1:4], start=2):
        point = POINT_LINE.fullmatch(line)
        if point is None:
            problems.append(f"line {number} is not '- <point>': {line[:40]!r}")
        elif not 3 <= len(point.group(1).split()) <= 15:
            problems.append(f"point on line {number} has {len(point.group(1).split())} words; expected 3-15")
        elif line.endswith("."):
            problems.append(f"point on line {number} ends with a period")
    return problems


def follows_house_style(text: str) -> bool:
    """True if `text` satisfies every rule of the house style (see the hh_sft data card)."""
    return not house_style_problems(text)


def clean_stop(text: str, stopped: bool) -> bool:
    """The answer ended with the end marker within the token budget and invented no next 'Human:' turn."""
    return stopped and "Human:" not in text


def _stopping_criteria(stop_sequences: list[list[int]], prompt_width: int):
    """A transformers StoppingCriteria that ends a row once its generated tokens end with any of the sequences."""
    class StopOnSequences(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for seq in stop_sequences:
                if input_ids.shape[1] - prompt_width >= len(seq):  # never match across the prompt boundary
                    tail = torch.tensor(seq, device=input_ids.device)
                    done |= (input_ids[:, -len(seq) :] == tail).all(dim=1)
            return done

    return StopOnSequences()


def first_stop(ids: list[int], stop_sequences: list[list[int]]) -> int | None:
    """Index where the earliest stop sequence starts in `ids`, or None."""
    starts = []
    for seq in stop_sequences:
        n = len(seq)
        starts += [i for i in range(len(ids) - n + 1) if ids[i : i + n] == seq][:1]
    return min(starts, default=None)


def generate_responses(
    model, tokenizer, prompts, stop_sequences, max_new_tokens=60, batch_size=25, **generate_kwargs
):
    """[{'text', 'stopped', 'new_tokens'}] per prompt: batched (left-padded) generation, greedy unless told otherwise."""
    stop_sequences = [list(s) for s in stop_sequences]
    single = sorted({s[0] for s in stop_sequences if len(s) == 1})
    multi = [s for s in stop_sequences if len(s) > 1]
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    kwargs.update(eos_token_id=single or None, **generate_kwargs)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the right edge
    results = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = batch.to(model.device)
            if multi:  # a marker that splits into several tokens needs its own stopping rule
                kwargs["stopping_criteria"] = [_stopping_criteria(multi, batch["input_ids"].shape[1])]
            with torch.no_grad():
                out = model.generate(**batch, **kwargs)
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                cut = first_stop(row, stop_sequences)
                kept = row if cut is None else row[:cut]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                results.append({"text": text, "stopped": cut is not None, "new_tokens": len(kept)})
    finally:
        tokenizer.padding_side = side
    return results


def style_flags(results: list[dict]) -> tuple[list[bool], list[bool]]:
    """(follows the house style, stopped cleanly) per generation: two lists of bools, for intervals and paired tests."""
    return (
        [follows_house_style(r["text"]) for r in results],
        [clean_stop(r["text"], r["stopped"]) for r in results],
    )


def style_metrics(results: list[dict]) -> dict:
    """{'compliance', 'clean_stops', 'n'}: shares of generations that follow the house style / stop cleanly."""
    complies, stops = style_flags(results)
    n = len(results)
    return {"compliance": sum(complies) / max(n, 1), "clean_stops": sum(stops) / max(n, 1), "n": n}


def answer_token_losses(model, batch):
    """Per row: the summed next-token loss over labelled (non -100) tokens, and their count -> two (b,) arrays."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    model.train(was_training)
    targets = batch["labels"][:, 1:]  # (b, T-1): the causal shift
    losses = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (b, T-1), 0 where ignored
    counted = targets != IGNORE_INDEX
    return (losses * counted).sum(1).cpu().numpy(), counted.sum(1).cpu().numpy()


def perplexity(model, dataset, batch_size: int = 16) -> float:
    """exp(mean next-token loss) over the labelled (non -100) tokens of a phase-1 dataset, token-weighted."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = trim_padding({k: v[start : start + batch_size] for k, v in dataset.tensors.items()})
            batch = {k: v.to(model.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # targets after the causal shift
            total += float(model(**batch, use_cache=False).loss) * n
            count += n
    model.train(was_training)
    return math.exp(total / max(count, 1))
