"""Instruction-record formats (Alpaca, ShareGPT, messages, rm-static), converters, loss mask (第 6 章, notebooks/06_instruction_data.ipynb)."""

from __future__ import annotations

import re

from .data import IGNORE_INDEX

FORMATS = ("alpaca", "sharegpt", "messages", "rm_static")
FORMAT_FIELDS = {
    "alpaca": {
        "instruction": str,
        "output": str,
    },  # "input" is optional (Evol-Instruct and LongAlpaca drop it)
    "sharegpt": {"conversations": list},
    "messages": {"messages": list},
    "rm_static": {"prompt": str, "response": str, "chosen": str, "rejected": str},
}
OWN_FIELDS = {"alpaca": ("instruction", "input", "output"), "rm_static": ("prompt", "response", "chosen")}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
SHAREGPT_ALIASES = {"user": "human", "assistant": "gpt"}  # BELLE writes "assistant"; read as "gpt"


class ConversionError(ValueError):
    """A record cannot be converted; the message names the record and the field."""


def _fail(record: dict, index: int, field: str, problem: str):
    rid = f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else ""
    raise ConversionError(f"record {index}{rid}: field {field!r}: {problem}")


def _extras(record: dict, own) -> dict:
    """Top-level fields a format does not use (id, source, ...): carried through every conversion unchanged."""
    return {k: v for k, v in record.items() if k not in own}


def _check_str(record, index, field, value):
    if not isinstance(value, str):
        _fail(record, index, field, f"expected a string, got {type(value).__name__} ({value!r:.40})")
    return value


def _check_fields(record, index, fmt):
    if not isinstance(record, dict):
        raise ConversionError(f"record {index}: expected a JSON object, got {type(record).__name__}")
    for name, typ in FORMAT_FIELDS[fmt].items():
        if name not in record:
            _fail(record, index, name, f"missing; a {fmt} record needs {', '.join(FORMAT_FIELDS[fmt])}")
        if not isinstance(record[name], typ):
            _fail(record, index, name, f"expected {typ.__name__}, got {type(record[name]).__name__}")


def _messages(record: dict, index: int) -> list[dict]:
    _check_fields(record, index, "messages")
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            role = m.get("role") if isinstance(m, dict) else m
            _fail(record, index, f"messages[{i}].role", f"got {role!r}; valid: system, user, assistant")
        _check_str(record, index, f"messages[{i}].content", m.get("content"))
    return record["messages"]


# ---- Alpaca <-> messages ----------------------------------------------------------------------------------------


def alpaca_to_messages(record: dict, index: int = 0) -> dict:
    """{instruction, input, output} -> {messages: [user, assistant]}; a non-empty input follows a blank line."""
    _check_fields(record, index, "alpaca")
    inp = _check_str(record, index, "input", record.get("input", ""))
    user = record["instruction"] + (f"\n\n{inp}" if inp else "")
    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return {"messages": turns, **_extras(record, OWN_FIELDS["alpaca"])}


def messages_to_alpaca(record: dict, index: int = 0) -> dict:
    """{messages: [user, assistant]} -> Alpaca; the user turn splits into instruction/input at its first blank line."""
    turns = _messages(record, index)
    roles = [m["role"] for m in turns]
    if roles != ["user", "assistant"]:
        _fail(
            record,
            index,
            "messages",
            f"Alpaca holds one user turn then one assistant turn, got roles {roles}",
        )
    instruction, _, inp = turns[0]["content"].partition("\n\n")
    extras = _extras(record, ("messages",))
    return {"instruction": instruction, "input": inp, "output": turns[1]["content"], **extras}


# ---- ShareGPT <-> messages --------------------------------------------------------------------------------------


def sharegpt_to_messages(record: dict, index: int = 0) -> dict:
    """{conversations: [{from, value}]} -> {messages: [{role, content}]} (human->user, gpt->assistant)."""
    _check_fields(record, index, "sharegpt")
    turns = []
    for i, turn in enumerate(record["conversations"]):
        who = turn.get("from") if isinstance(turn, dict) else None
        who = SHAREGPT_ALIASES.get(who, who)
        if who not in SHAREGPT_ROLES:
            _fail(
                record, index, f"conversations[{i}].from", f"got {who!r}; valid: {', '.join(SHAREGPT_ROLES)}"
            )
        value = _check_str(record, index, f"conversations[{i}].value", turn.get("value"))
        turns.append({"role": SHAREGPT_ROLES[who], "content": value})
    return {"messages": turns, **_extras(record, ("conversations",))}


def messages_to_sharegpt(record: dict, index: int = 0) -> dict:
    """{messages} -> {conversations} (user->human, assistant->gpt, system->system)."""
    back = {v: k for k, v in SHAREGPT_ROLES.items()}
    turns = [{"from": back[m["role"]], "value": m["content"]} for m in _messages(record, index)]
    return {"conversations": turns, **_extras(record, ("messages",))}


# ---- rm-static <-> messages -------------------------------------------------------------------------------------

_TURN = re.compile(r"\n\n(Human|Assistant):")


def rm_static_to_messages(record: dict, index: int = 0) -> dict:
    """rm-static {prompt, response, chosen, rejected} -> {messages} ending with `chosen`; `rejected` rides along."""
    _check_fields(record, index, "rm_static")
    if record["response"] != record["chosen"]:
        _fail(record, index, "response", "differs from 'chosen'; rm-static SFT data uses the chosen answer")
    parts = _TURN.split(record["prompt"])  # ['', 'Human', ' q', 'Assistant', '']
    if parts[0] or len(parts) < 5 or parts[-2] != "Assistant" or parts[-1]:
        _fail(
            record,
            index,
            "prompt",
            'expected "\\n\\nHuman: ...\\n\\nAssistant:" turns ending with "Assistant:"',
        )
    turns = []
    for who, text in zip(parts[1:-2:2], parts[2:-2:2], strict=True):
        role = "user" if who == "Human" else "assistant"
        if (turns[-1]["role"] if turns else "assistant") == role:
            _fail(
                record,
                index,
                "prompt",
                f"turns must alternate from a Human turn; got {who} at turn {len(turns)}",
            )
        turns.append({"role": role, "content": text.removeprefix(" ")})
    turns.append({"role": "assistant", "content": record["chosen"].removeprefix(" ")})
    return {"messages": turns, **_extras(record, OWN_FIELDS["rm_static"])}


def messages_to_rm_static(record: dict, index: int = 0, rejected: str | None = None) -> dict:
    """{messages} (user/assistant turns, assistant last) -> rm-static; needs a `rejected` answer (field or argument)."""
    turns = _messages(record, index)
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            _fail(
                record,
                index,
                f"messages[{i}].role",
                f"rm-static alternates user/assistant from a user turn, got {m['role']!r}",
            )
        if _TURN.search(m["content"]):
            _fail(
                record,
                index,
                f"messages[{i}].content",
                "contains a turn marker (Human:/Assistant:) after a blank line",
            )
    if len(turns) % 2:
        _fail(record, index, "messages", "the last turn must be the assistant's answer")
    rejected = record.get("rejected", rejected)
    if rejected is None:
        _fail(record, index, "rejected", "a preference record needs a worse answer; pass rejected=...")
    prompt = "".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns[:-1]
    )
    answer = " " + turns[-1]["content"]
    extras = _extras(record, ("messages", "rejected"))
    return {
        "prompt": prompt + "\n\nAssistant:",
        "response": answer,
        "chosen": answer,
        "rejected": rejected,
        **extras,
    }


TO_MESSAGES = {
    "alpaca": alpaca_to_messages,
    "sharegpt": sharegpt_to_messages,
    "rm_static": rm_static_to_messages,
    "messages": lambda r, i=0: {**r, "messages": _messages(r, i)},
}
FROM_MESSAGES = {
    "alpaca": messages_to_alpaca,
    "sharegpt": messages_to_sharegpt,
    "rm_static": messages_to_rm_static,
    "messages": lambda r, i=0: r,
}


def convert(records: list[dict], src: str, dst: str) -> list[dict]:
    """Convert records from format `src` to `dst` through OpenAI messages; errors name the record and field."""
    for name in (src, dst):
        if name not in FORMATS:
            raise ValueError(f"unknown format {name!r}; valid: {', '.join(FORMATS)}")
    return [FROM_MESSAGES[dst](TO_MESSAGES[src](r, i), i) for i, r in enumerate(records)]


def detect_format(record: dict) -> str:
    """The format whose required fields the record has, e.g. 'alpaca'."""
    for fmt in ("rm_static", "alpaca", "sharegpt", "messages"):
        if all(k in record for k in FORMAT_FIELDS[fmt]):
            return fmt
    raise ConversionError(f"record with fields {sorted(record)} matches none of: {', '.join(FORMATS)}")


# ---- chat template + loss mask ----------------------------------------------------------------------------------


TRAIN_ON = ("all", "last")


def sft_example(tokenizer, messages: list[dict], train_on: str = "all") -> dict:
    """Chat-template render -> {'input_ids', 'labels', 'text'}; labels are -100 except on assistant turns + EOS.

    train_on: 'all' assistant turns, or only the 'last' one (rm-static's prompt/chosen: earlier turns are context).
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on {train_on!r}; valid: {', '.join(TRAIN_ON)}")
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []  # character spans of the assistant answers, including their closing <|im_end|>
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (train_on == "last" and i != last):
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise ValueError("the chat template does not render conversations prefix by prefix; mask by hand")
        spans.append((len(before), len(upto.rstrip())))  # rstrip: the newline after <|im_end|> is not learned
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        tok if any(a <= start < b for a, b in spans) else IGNORE_INDEX
        for tok, (start, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
    ]
    return {"input_ids": enc["input_ids"], "labels": labels, "text": text}


def mark_targets(tokenizer, input_ids, labels, marks: tuple[str, str] = ("«", "»")) -> str:
    """The decoded tokens with every run of supervised tokens (label != -100) wrapped in `marks` (pass real tokens only)."""
    ids, labels = list(map(int, input_ids)), list(map(int, labels))
    pieces, inside = [], False
    for tok, label in zip(ids, labels, strict=True):
        target = label != IGNORE_INDEX
        if target != inside:
            pieces.append(marks[0] if target else marks[1])
            inside = target
        pieces.append(tokenizer.decode([tok]))
    return "".join(pieces + ([marks[1]] if inside else []))


def token_stats(tokenizer, texts: list[str]) -> list[dict]:
    """Per text: characters, tokens and tokens per character under `tokenizer`."""
    rows = []
    for t in texts:
        n = len(tokenizer(t, add_special_tokens=False)["input_ids"])
        rows.append({"chars": len(t), "tokens": n, "tokens_per_char": n / max(1, len(t))})
    return rows


# Project-written parallel sentences (same meaning in English and Chinese) for the tokenizer comparison.
PARALLEL_SAMPLES = [
    ("The weather is nice today, so let's go for a walk in the park.", "今天天气很好，我们去公园散步吧。"),
    ("Please summarise the following article in three sentences.", "请用三句话总结下面这篇文章。"),
    ("Water boils at 100 degrees Celsius at sea level.", "在海平面上，水在摄氏一百度时沸腾。"),
    ("How do I reverse a string in Python?", "在 Python 里怎样反转一个字符串？"),
    ("Translate the following sentence into French.", "把下面这句话翻译成法语。"),
    ("Regular exercise improves both physical and mental health.", "经常锻炼对身体和心理健康都有好处。"),
]
