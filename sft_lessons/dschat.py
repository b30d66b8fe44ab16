"""DeepSpeed-Chat step 1 (SFT), the data side made correct (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb).

Tokenizer, prompt datasets, label masks, safe caches, saving.

The public names and signatures follow DeepSpeed-Chat (`load_hf_tokenizer`, `create_prompt_dataset`, `save_hf_format`).
Fixes over DeepSpeed-Chat's code:
- records are rendered with the tokenizer's chat template by default (`prompt_format="chat"`), so the model is trained
  on the very tokens it is later chatted with; DeepSpeed-Chat's raw "Human:/Assistant:" text stays an option ('raw');
- the tokenizer is loaded from the local path it was given (the seed re-reads `_name_or_path` and downloads);
- labels mask the prompt and the padding with IGNORE_INDEX, by position, never by token id (pad = eos would hide the real end);
- the end-of-conversation marker is kept whole, with its labels, also when it splits into several tokens;
- cache names hash every input that changes the result (data file contents included), caches are written atomically
  and read with `torch.load(weights_only=True)` (tensors only, no unpickling of arbitrary objects);
- `save_hf_format` writes a complete checkpoint (safetensors, config, generation config, tokenizer, chat template).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .data import IGNORE_INDEX, data_path, load_jsonl
from .lora import LORA_KEYS, lora_layers
from .models import TINY_CORPUS, resolve
from .record_formats import rm_static_to_messages, sft_example
from .settings import use_hub

END_OF_CONVERSATION_TOKEN = "<|endoftext|>"  # DeepSpeed-Chat's raw format; the chat format ends with the template's
PROMPT_FORMATS = ("chat", "raw")  # the tokenizer's chat template (default), or "\n\nHuman: ...\n\nAssistant:" text
LOCAL_DATASETS = {"local/hh_sft": "hh_sft.jsonl", "hh_sft": "hh_sft.jsonl"}
HUB_DATASETS = ("Dahoas/rm-static",)
HH_FIELDS = {"prompt": str, "response": str, "chosen": str, "rejected": str, "split": str}
CACHE_FORMAT = 3  # bump when the tokenization below changes, so old caches are never reused


# ---- tokenizer ----


def load_hf_tokenizer(model_name_or_path, fast_tokenizer=True, add_special_tokens=None):
    """The tokenizer of a local checkpoint (or a course model name), with pad = eos and right padding."""
    path = resolve(str(model_name_or_path))  # a local dir stays a local dir: no hub lookup, no download
    tokenizer = AutoTokenizer.from_pretrained(path, use_fast=fast_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if add_special_tokens is not None:
        extra = [add_special_tokens] if isinstance(add_special_tokens, str) else list(add_special_tokens)
        tokenizer.add_special_tokens(
            {"additional_special_tokens": extra}
        )  # may grow the vocab: resize the model
    return tokenizer


def end_of_conversation_ids(tokenizer, token: str = END_OF_CONVERSATION_TOKEN) -> list[int]:
    """The ids the end-of-conversation marker tokenizes to (one id if it is a special token, several otherwise)."""
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"end_of_conversation_token {token!r} tokenizes to nothing")
    return ids


def opt_style_tokenizer(vocab_size: int = 400):
    """A small GPT-2/OPT-style byte-level BPE tokenizer (offline) in which '<|endoftext|>' is plain text and splits."""
    tok = Tokenizer(tokenizer_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="</s>")


# ---- raw data: rm-static-style records ----


class RawPromptDataset:
    """rm-static-style records (prompt, chosen, rejected) with DeepSpeed-Chat's accessor names."""

    def __init__(self, dataset_name: str, train: list[dict], eval: list[dict], fingerprint: str):
        self.dataset_name, self.fingerprint = dataset_name, fingerprint
        self.dataset_name_clean = re.sub(r"[^A-Za-z0-9]+", "_", dataset_name).strip("_")
        self.train, self.eval = train, eval

    def get_train_data(self) -> list[dict]:
        return self.train

    def get_eval_data(self) -> list[dict]:
        return self.eval

    def get_prompt(self, sample) -> str:
        return sample["prompt"]

    def get_chosen(self, sample) -> str:
        return sample["chosen"]

    def get_rejected(self, sample) -> str:
        return sample["rejected"]

    def get_prompt_and_chosen(self, sample) -> str:
        return sample["prompt"] + sample["chosen"]

    def get_prompt_and_rejected(self, sample) -> str:
        return sample["prompt"] + sample["rejected"]


def _file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_data_path(dataset_name: str) -> None:
    """ValueError unless `dataset_name` names a bundled set, an existing .jsonl file, or an enabled hub set (no loading)."""
    if dataset_name in LOCAL_DATASETS or str(dataset_name).endswith(".jsonl"):
        path = data_path(LOCAL_DATASETS[dataset_name]) if dataset_name in LOCAL_DATASETS else Path(dataset_name)
        if not path.is_file():
            raise ValueError(f"data_path {dataset_name!r}: no such file")
    elif dataset_name in HUB_DATASETS:
        if not use_hub():
            raise ValueError(f"{dataset_name!r} needs SFT_LESSONS_USE_HUB=1 and internet; offline use 'local/hh_sft'")
    else:
        valid = ", ".join([*LOCAL_DATASETS, *HUB_DATASETS, "<file>.jsonl"])
        raise ValueError(f"unknown data_path {dataset_name!r}; valid: {valid}")


def get_raw_dataset(dataset_name: str) -> RawPromptDataset:
    """The bundled hh_sft data ('local/hh_sft'), a .jsonl file with its fields, or Dahoas/rm-static (hub opt-in)."""
    if dataset_name in LOCAL_DATASETS or str(dataset_name).endswith(".jsonl"):
        path = (
            data_path(LOCAL_DATASETS[dataset_name]) if dataset_name in LOCAL_DATASETS else Path(dataset_name)
        )
        if not path.is_file():
            raise FileNotFoundError(f"data_path {dataset_name!r}: no such file")
        records = load_jsonl(path, HH_FIELDS)
        train = [r for r in records if r["split"] == "train"]
        test = [r for r in records if r["split"] == "test"]
        return RawPromptDataset(str(dataset_name), train, test, _file_sha256(path))
    if dataset_name in HUB_DATASETS:
        if not use_hub():
            raise ValueError(
                f"{dataset_name!r} needs SFT_LESSONS_USE_HUB=1 and internet; offline use 'local/hh_sft'"
            )

        ds = load_dataset(dataset_name)
        fingerprint = f"{ds['train']._fingerprint}:{ds['test']._fingerprint}"
        return RawPromptDataset(dataset_name, list(ds["train"]), list(ds["test"]), fingerprint)
    valid = ", ".join([*LOCAL_DATASETS, *HUB_DATASETS, "<file>.jsonl"])
    raise ValueError(f"unknown data_path {dataset_name!r}; valid: {valid}")


# ---- data_split: each training phase gets its own, seeded share ----


def parse_data_split(data_split: str) -> list[float]:
    """'2,4,4' -> [0.2, 0.4, 0.4]: the shares of phases 1, 2 and 3; raises ValueError on a bad split."""
    parts = str(data_split).split(",")
    try:
        shares = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"data_split {data_split!r}: expected three comma-separated numbers, e.g. '2,4,4'"
        ) from None
    if len(shares) != 3 or any(s < 0 or s != s for s in shares) or sum(shares) <= 0:
        raise ValueError(
            f"data_split {data_split!r}: expected three non-negative numbers (phases 1, 2, 3) with a positive sum"
        )
    return [s / sum(shares) for s in shares]


def split_indices(size: int, data_split: str, train_phase: int, seed: int) -> list[int]:
    """Indices of phase `train_phase`'s share of `size` records: a seeded shuffle, cut as DeepSpeed-Chat cuts it
    (each share rounded with Python's round(), halves to even; the cuts moved back by the excess, clamped)."""
    if train_phase not in (1, 2, 3):
        raise ValueError(f"train_phase must be 1, 2 or 3, got {train_phase!r}")
    shares = parse_data_split(data_split)
    # DeepSpeed-Chat's rounding: each share rounded on its own, the excess (or shortfall) taken off every boundary
    bounds = [0]
    for share in shares:
        bounds.append(bounds[-1] + int(round(share * float(size))))
    excess = bounds[-1] - size
    bounds = [0] + [min(max(b - excess, 0), size) for b in bounds[1:]]  # clamped: upstream can go below 0
    order = np.random.RandomState(seed).permutation(size)
    return order[bounds[train_phase - 1] : bounds[train_phase]].tolist()


# ---- phase 1: one record -> input_ids, attention_mask, labels ----


def sft_labels(input_ids, attention_mask, prompt_length: int):
    """(T,) labels: the input ids, with the prompt (first prompt_length positions) and the padding set to -100."""
    labels = input_ids.clone()
    labels[:prompt_length] = IGNORE_INDEX  # the prompt is context, not a target
    labels[
        attention_mask == 0
    ] = IGNORE_INDEX  # padding, found by position; never by id: pad = eos is a real target too
    return labels


def build_sft_example(tokenizer, prompt: str, response: str, max_seq_len: int, eot_ids: list[int]):
    """dict of (max_seq_len,) tensors for prompt + response + end marker, right-padded; None if it does not fit."""
    prompt_ids = tokenizer(prompt)["input_ids"]  # with the tokenizer's own BOS, if it adds one
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + list(eot_ids)
    ids = prompt_ids + response_ids
    if len(ids) > max_seq_len:  # never cut the answer or its end marker: drop the record instead
        return None
    pad = max_seq_len - len(ids)
    input_ids = torch.tensor(ids + [tokenizer.pad_token_id] * pad)
    attention_mask = torch.tensor([1] * len(ids) + [0] * pad)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": sft_labels(input_ids, attention_mask, len(prompt_ids)),
    }


def record_messages(raw: RawPromptDataset, record, answer: str | None = None) -> list[dict]:
    """An rm-static record as chat messages: the prompt's turns, then `answer` (default: chosen) as the last one."""
    answer = raw.get_chosen(record) if answer is None else answer
    rm = {"prompt": raw.get_prompt(record), "response": answer, "chosen": answer, "rejected": ""}
    return rm_static_to_messages(rm)["messages"]


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The template's text for everything before the last (assistant) message, ending with the generation prompt."""
    return tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


def build_chat_example(tokenizer, messages: list[dict], max_seq_len: int):
    """dict of (max_seq_len,) tensors for a chat-template render, labels on the last answer and its end marker only;
    right-padded; None if it does not fit."""
    example = sft_example(tokenizer, messages, train_on="last")  # labels: last answer + <|im_end|>, by offsets
    ids, labels = example["input_ids"], example["labels"]
    if len(ids) > max_seq_len:  # never cut the answer or its end marker: drop the record instead
        return None
    pad = max_seq_len - len(ids)
    return {
        "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * pad),
        "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
        "labels": torch.tensor(labels + [IGNORE_INDEX] * pad),  # padding is never a target
    }


def _check_prompt_format(tokenizer, prompt_format: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_format 'chat' needs a tokenizer with a chat template; this one has none "
                         "(use prompt_format 'raw', DeepSpeed-Chat's Human/Assistant text)")  # fmt: skip


def _pad_rows(rows: list[list[int]], pad_id: int, left: bool = False):
    """list of id lists -> (ids (N, T), mask (N, T)) padded to the longest row."""
    width = max(map(len, rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols], mask[i, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def tokenize_split(records, raw: RawPromptDataset, phase, tokenizer, max_seq_len, eot_ids,
                   prompt_format: str = "raw") -> dict:  # fmt: skip
    """Tensors of one split for one phase: 1 -> input_ids/attention_mask/labels, 2 -> chosen_*/rejected_*, 3 -> prompt."""
    chat = prompt_format == "chat"
    if phase == 1:
        examples = [
            build_chat_example(tokenizer, record_messages(raw, r), max_seq_len) if chat
            else build_sft_example(tokenizer, raw.get_prompt(r), raw.get_chosen(r), max_seq_len, eot_ids)
            for r in records
        ]  # fmt: skip
        kept = [e for e in examples if e is not None]
        out = {k: torch.stack([e[k] for e in kept]) if kept else torch.zeros(0, max_seq_len, dtype=torch.long)
               for k in ("input_ids", "attention_mask", "labels")}  # fmt: skip
    elif phase == 2:
        out = {}
        for side, get in (("chosen", raw.get_chosen), ("rejected", raw.get_rejected)):
            if chat:  # the whole render, cut to max_seq_len (the reward model reads it; nothing is generated)
                rows = [sft_example(tokenizer, record_messages(raw, r, get(r)))["input_ids"][:max_seq_len]
                        for r in records]  # fmt: skip
            else:
                rows = [tokenizer(raw.get_prompt(r) + get(r))["input_ids"][: max_seq_len - len(eot_ids)]
                        + list(eot_ids) for r in records]  # fmt: skip
            out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = _pad_rows(rows, tokenizer.pad_token_id)
    else:
        texts = [chat_prompt(tokenizer, record_messages(raw, r)) if chat else raw.get_prompt(r) for r in records]
        rows = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
        kept = [row for row in rows if len(row) <= max_seq_len]
        out = {}
        out["input_ids"], out["attention_mask"] = _pad_rows(kept, tokenizer.pad_token_id, left=True)
    out["num_dropped"] = torch.tensor(len(records) - len(next(iter(out.values()))))
    return out


class PromptDataset:
    """A torch-style dataset over cached tensors; phase 1 items are dicts with input_ids, attention_mask, labels."""

    def __init__(self, tensors: dict, train_phase: int):
        self.tensors = {k: v for k, v in tensors.items() if v.dim() >= 1}
        self.num_dropped = int(tensors.get("num_dropped", 0))
        self.train_phase = train_phase

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx):
        row = {k: v[idx] for k, v in self.tensors.items()}
        if self.train_phase == 2:
            keys = (
                "chosen_input_ids",
                "chosen_attention_mask",
                "rejected_input_ids",
                "rejected_attention_mask",
            )
            return tuple(row[k] for k in keys)
        return row


# ---- create_prompt_dataset: the seed's signature, with a cache that cannot go stale ----


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of everything in the tokenizer that changes token ids: vocab, merges, specials, pad id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.pad_token_id, tokenizer.all_special_tokens])
    return hashlib.sha256((body + extra).encode()).hexdigest()


def cache_key(**inputs) -> str:
    """sha256 hex digest of the inputs (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def atomic_torch_save(tensors: dict, path) -> None:
    """torch.save into a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _concat(parts: list[dict], pad_id: int, left: bool) -> dict:
    """Concatenate several datasets' tensors, padding rows to the widest (phase 2/3 widths may differ)."""
    merged = {"num_dropped": sum(p["num_dropped"] for p in parts)}
    for k in (k for k in parts[0] if k != "num_dropped"):
        width = max(p[k].shape[-1] for p in parts)
        fill = 0 if "mask" in k else IGNORE_INDEX if k == "labels" else pad_id
        pads = [(width - p[k].shape[-1], 0) if left else (0, width - p[k].shape[-1]) for p in parts]
        merged[k] = torch.cat([F.pad(p[k], pad, value=fill) for p, pad in zip(parts, pads, strict=True)])
    return merged


def _shuffle(tensors: dict, seed: int) -> dict:
    """The same seeded permutation applied to every (N, ...) tensor."""
    n = len(next(v for v in tensors.values() if v.dim() >= 1))
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n))
    return {k: v[order] if v.dim() >= 1 else v for k, v in tensors.items()}


def _build(data_path, data_split, train_phase, seed, tokenizer, max_seq_len, eot_ids, sft_only_data_path,
           prompt_format):  # fmt: skip
    """(train tensors, eval tensors): each dataset's phase share, tokenized; several datasets blended and shuffled."""
    parts = {"train": [], "eval": []}
    jobs = [(name, data_split) for name in data_path]
    if train_phase == 1:
        jobs += [(name, "10,0,0") for name in sft_only_data_path]  # SFT-only data goes entirely to phase 1
    for name, split in jobs:
        raw = get_raw_dataset(name)
        for key, records in (("train", raw.get_train_data()), ("eval", raw.get_eval_data())):
            chosen = [records[i] for i in split_indices(len(records), split, train_phase, seed)]
            parts[key].append(
                tokenize_split(chosen, raw, train_phase, tokenizer, max_seq_len, eot_ids, prompt_format)
            )
    out = []
    for key in ("train", "eval"):
        merged = _concat(parts[key], tokenizer.pad_token_id, left=train_phase == 3)
        out.append(_shuffle(merged, seed) if len(jobs) > 1 else merged)
    return out


def create_prompt_dataset(
    local_rank,
    data_path,
    data_split,
    output_path,
    train_phase,
    seed,
    tokenizer,
    max_seq_len,
    end_of_conversation_token=END_OF_CONVERSATION_TOKEN,
    sft_only_data_path=[],  # noqa: B006 - the seed's signature; never mutated
    reload=False,
    prompt_format="chat",
):
    """(train, eval) PromptDatasets for `train_phase`, cached under output_path by a sha256 of every input.

    prompt_format 'chat' (default) renders each record with the tokenizer's chat template, the format the model is
    chatted with afterwards; the end marker is the template's own and end_of_conversation_token is not used.
    'raw' is DeepSpeed-Chat's: the record's "\n\nHuman: ...\n\nAssistant:" text, the answer, then
    end_of_conversation_token (None: the tokenizer's eos_token, as upstream passes).
    """
    data_path = [data_path] if isinstance(data_path, str) else list(data_path)
    sft_only = [sft_only_data_path] if isinstance(sft_only_data_path, str) else list(sft_only_data_path)
    parse_data_split(data_split)  # fail fast, before any work
    if train_phase not in (1, 2, 3):
        raise ValueError(f"train_phase must be 1, 2 or 3, got {train_phase!r}")
    _check_prompt_format(tokenizer, prompt_format)
    chat = prompt_format == "chat"
    eot_ids = [] if chat else end_of_conversation_ids(tokenizer, end_of_conversation_token or tokenizer.eos_token)
    key = cache_key(
        format=CACHE_FORMAT,
        data=[(name, get_raw_dataset(name).fingerprint) for name in data_path],
        sft_only=[(name, get_raw_dataset(name).fingerprint) for name in sft_only],
        data_split=data_split,
        train_phase=train_phase,
        seed=seed,
        tokenizer=tokenizer_fingerprint(tokenizer),
        max_seq_len=max_seq_len,
        end_of_conversation=eot_ids,
        prompt_format=prompt_format,
        chat_template=tokenizer.chat_template if chat else None,
    )
    os.makedirs(output_path, exist_ok=True)
    train_file, eval_file = Path(output_path, f"traindata_{key}.pt"), Path(output_path, f"evaldata_{key}.pt")
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    # local rank 0 of each node builds (the folder is node-local, as in DeepSpeed-Chat); the others wait
    if local_rank <= 0 and (reload or not (train_file.is_file() and eval_file.is_file())):
        train, evaluation = _build(
            data_path, data_split, train_phase, seed, tokenizer, max_seq_len, eot_ids, sft_only, prompt_format
        )
        atomic_torch_save(train, train_file)
        atomic_torch_save(evaluation, eval_file)
    if distributed:
        torch.distributed.barrier()  # the other ranks wait for rank 0's files
    load = lambda f: PromptDataset(torch.load(f, weights_only=True), train_phase)  # noqa: E731
    return load(train_file), load(eval_file)


# ---- save_hf_format: a checkpoint that from_pretrained can load, tokenizer and chat template included ----


def _full_state_dict(model) -> dict:
    """The model's state dict on CPU; under ZeRO-3 the partitioned parameters are gathered first."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return model.state_dict()
    import deepspeed

    copies = {}  # by storage, so tied weights (embeddings = lm_head) stay one tensor
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for v in model.state_dict().values():
            if v.data_ptr() not in copies:
                copies[v.data_ptr()] = v.detach().cpu().clone()
        return {k: copies[v.data_ptr()] for k, v in model.state_dict().items()}


def save_hf_format(model, tokenizer, args, sub_folder: str = "", write: bool = True, extra_files=None,
                   keep=()) -> Path:
    """Write config, generation config, model.safetensors, the whole tokenizer and `extra_files` ({name: text}) to
    args.output_dir/sub_folder, atomically: into a temporary folder beside it, then renamed (entries of the old folder
    named in `keep` are carried over). Under ZeRO-3 every rank must call it (the parameters are gathered); only the
    ranks with write=True write."""
    model_to_save = model.module if hasattr(model, "module") else model  # unwrap a DeepSpeed engine
    unfused = [name for name, layer in lora_layers(model_to_save).items() if not layer.fuse_lora]
    if unfused:  # the seed silently dropped the adapters here; fusing first keeps what was learned
        raise ValueError(
            f"{len(unfused)} LoRA layers are not fused (e.g. {unfused[0]!r}); "
            "call convert_lora_to_linear_layer(model) before save_hf_format"
        )
    output_dir = Path(getattr(args, "output_dir", args), sub_folder)
    state = {
        k: v for k, v in _full_state_dict(model_to_save).items() if k.rsplit(".", 1)[-1] not in LORA_KEYS
    }
    if not write:
        return output_dir
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.saving-", dir=output_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the saved model is an ordinary folder
    try:
        model_to_save.save_pretrained(tmp, state_dict=state)  # safetensors + config + generation_config
        tokenizer.save_pretrained(tmp)  # tokenizer.json, its config, special tokens, chat template
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OSError(f"saving into {tmp} failed ({exc.strerror or exc}); {output_dir} is as it was") from exc
    try:
        replace_dir(tmp, output_dir, keep)
    except OSError as exc:
        raise OSError(f"could not move the saved model to {output_dir} ({exc.strerror or exc}); "
                      f"it is complete in {tmp}") from exc  # fmt: skip
    return output_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, then rename: whole or absent."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a plain open() would not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(src: Path, dst: Path, keep=()) -> None:
    """Put folder `src` at `dst`, replacing a folder there: the old one is moved aside first and removed last;
    entries of the old folder named in `keep` (and absent from `src`) move into the new one."""
    old = None
    if dst.is_dir():
        for name in keep:
            if (dst / name).exists() and not (src / name).exists():
                os.replace(dst / name, src / name)
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except OSError:
        if old is not None:
            os.replace(old / dst.name, dst)  # put the previous model back
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
