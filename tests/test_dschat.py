import json

import pytest
import torch

from sft_lessons import assets, dschat
from sft_lessons.data import data_path
from sft_lessons.dschat import (
    build_sft_example,
    create_prompt_dataset,
    end_of_conversation_ids,
    load_hf_tokenizer,
    opt_style_tokenizer,
    parse_data_split,
    save_hf_format,
    sft_labels,
    split_indices,
)
from sft_lessons.lora import convert_linear_layer_to_lora, convert_lora_to_linear_layer
from sft_lessons.models import tiny_causal_lm, tiny_tokenizer

PROMPT = "\n\nHuman: what is the capital of France?\n\nAssistant:"
RESPONSE = " Answer: Paris is the capital of France.\n- keys and values"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# ---- tokenizer ----


def test_load_hf_tokenizer_stays_local(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    # the seed would follow _name_or_path to the hub; we must load the files in tmp_path
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "facebook/opt-350m"}))
    loaded = load_hf_tokenizer(str(tmp_path))
    assert len(loaded) == len(tok) == 320
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "right"


def test_load_hf_tokenizer_adds_special_tokens(tmp_path, tok):
    tok.save_pretrained(tmp_path)
    loaded = load_hf_tokenizer(str(tmp_path), add_special_tokens="<|eot|>")
    assert len(loaded) == 321
    assert len(end_of_conversation_ids(loaded, "<|eot|>")) == 1


def test_end_of_conversation_single_and_split(tok):
    assert end_of_conversation_ids(tok) == [0]  # a special token: one id
    split = opt_style_tokenizer()
    ids = end_of_conversation_ids(split)
    assert len(ids) > 1 and split.decode(ids) == "<|endoftext|>"


# ---- data_split ----


@pytest.mark.parametrize("bad", ["2,4", "a,b,c", "0,0,0", "-1,2,2", "1,2,3,4", ""])
def test_parse_data_split_rejects(bad):
    with pytest.raises(ValueError, match="data_split"):
        parse_data_split(bad)


def test_parse_data_split_shares():
    assert parse_data_split("2,4,4") == pytest.approx([0.2, 0.4, 0.4])
    assert parse_data_split("10,0,0") == [1.0, 0.0, 0.0]


def test_split_indices_partition_is_seeded():
    parts = [split_indices(101, "2,4,4", phase, seed=7) for phase in (1, 2, 3)]
    assert sorted(sum(parts, [])) == list(range(101))  # disjoint and complete
    assert [len(p) for p in parts] == [21, 40, 40]  # DeepSpeed-Chat's rounding: 20 + 40 + 40, the missing one first
    assert parts[0] == split_indices(101, "2,4,4", 1, seed=7)
    assert parts[0] != split_indices(101, "2,4,4", 1, seed=8)
    with pytest.raises(ValueError, match="train_phase"):
        split_indices(10, "2,4,4", 4, seed=0)


@pytest.mark.parametrize(
    "size, split, sizes",  # by hand from get_raw_dataset_split_index in DeepSpeed-Chat's data_utils.py
    [(10, "1,1,1", [4, 3, 3]), (1000, "2,4,4", [200, 400, 400]), (7, "1,1,1", [3, 2, 2]), (3, "0,1,1", [0, 1, 2])],
)
def test_split_sizes_round_as_upstream(size, split, sizes):
    # (3, "0,1,1"): upstream's boundaries become [0, -1, 1, 3]; ours are clamped to [0, 0, 1, 3]
    assert [len(split_indices(size, split, phase, seed=0)) for phase in (1, 2, 3)] == sizes


# ---- phase 1 labels, token by token ----


def test_labels_mask_prompt_and_padding(tok):
    ex = build_sft_example(tok, PROMPT, RESPONSE, 64, [0])
    n_prompt = len(tok(PROMPT)["input_ids"])
    n_real = n_prompt + len(tok(RESPONSE, add_special_tokens=False)["input_ids"]) + 1
    ids, mask, labels = ex["input_ids"], ex["attention_mask"], ex["labels"]
    assert ids.shape == mask.shape == labels.shape == (64,)
    assert (labels[:n_prompt] == -100).all()  # prompt
    assert torch.equal(labels[n_prompt:n_real], ids[n_prompt:n_real])  # answer + end marker
    assert labels[n_real - 1] == 0  # the end marker keeps its label
    assert (labels[n_real:] == -100).all() and (mask[n_real:] == 0).all() and (ids[n_real:] == 2).all()


def test_end_label_survives_when_pad_is_eos(tok):
    # end the answer with <|im_end|> (= eos = pad): masking by id would hide the real end
    ex = build_sft_example(tok, PROMPT, RESPONSE, 64, [tok.eos_token_id])
    n_real = int(ex["attention_mask"].sum())
    assert ex["labels"][n_real - 1] == tok.pad_token_id == tok.eos_token_id  # learnt: the model can stop
    wrong = ex["input_ids"].masked_fill(ex["input_ids"] == tok.pad_token_id, -100)  # the id-based mask
    assert wrong[n_real - 1] == -100


def test_sft_labels_by_position():
    ids = torch.tensor([5, 6, 7, 2, 2, 2])
    mask = torch.tensor([1, 1, 1, 1, 0, 0])
    assert sft_labels(ids, mask, 2).tolist() == [-100, -100, 7, 2, -100, -100]


def test_multi_token_marker_kept_whole():
    split = opt_style_tokenizer()
    eot = end_of_conversation_ids(split)
    ex = build_sft_example(split, PROMPT, RESPONSE, 256, eot)
    n_real = int(ex["attention_mask"].sum())
    assert ex["labels"][n_real - len(eot) : n_real].tolist() == eot  # every piece labelled
    too_short = n_real - 1  # it would cut the marker: the record is dropped, not truncated
    assert build_sft_example(split, PROMPT, RESPONSE, too_short, eot) is None


# ---- create_prompt_dataset and its cache ----


def test_create_prompt_dataset_phase1(tmp_path, tok):
    train, evaluation = create_prompt_dataset(-1, ["local/hh_sft"], "10,0,0", tmp_path, 1, 0, tok, 512)
    item = train[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert len(train) + train.num_dropped == 280 and len(evaluation) + evaluation.num_dropped == 50
    assert item["input_ids"].shape == (512,)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(len(f.split("_")[1].split(".")[0]) == 64 for f in files)  # sha256 names
    for prefix, dataset in (("traindata", train), ("evaldata", evaluation)):
        (f,) = tmp_path.glob(f"{prefix}_*.pt")
        # tensors only: loadable without unpickling arbitrary objects
        cached = torch.load(f, weights_only=True)
        assert set(cached) == {"input_ids", "attention_mask", "labels", "num_dropped"}
        assert all(torch.equal(cached[k], v) for k, v in dataset.tensors.items())  # what the datasets hold
        assert int(cached["num_dropped"]) == dataset.num_dropped


def test_chat_format_trains_on_the_rendered_conversation(tmp_path, tok):
    raw = dschat.get_raw_dataset("local/hh_sft")
    train, _ = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512)  # chat: the default
    order = split_indices(len(raw.get_train_data()), "10,0,0", 1, seed=0)  # phase 1's seeded order
    records = [raw.get_train_data()[j] for j in order]
    multi = next(i for i, r in enumerate(records) if r["prompt"].count("Human:") > 1)
    for i in (0, multi):
        record, item = records[i], train[i]
        messages = dschat.record_messages(raw, record)
        n = int(item["attention_mask"].sum())
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert tok.decode(item["input_ids"][:n]) == rendered  # the trained tokens are the template's
        target = item["labels"][item["labels"] != -100]
        assert tok.decode(target) == messages[-1]["content"] + "<|im_end|>"  # only the last answer + end marker
        assert (item["labels"][n:] == -100).all() and (item["attention_mask"][n:] == 0).all()
        prompt_ids = tok(dschat.chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
        assert item["input_ids"][: len(prompt_ids)].tolist() == prompt_ids  # generation sees the same prefix


def test_raw_format_and_its_end_marker(tmp_path, tok):
    chat, _ = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512)
    raw, _ = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512, prompt_format="raw")
    assert len(list(tmp_path.glob("traindata_*.pt"))) == 2  # the format is part of the cache key
    n = int(raw[0]["attention_mask"].sum())
    assert "Human:" in tok.decode(raw[0]["input_ids"][:n]) and "<|im_start|>" not in tok.decode(raw[0]["input_ids"][:n])
    assert raw[0]["labels"][n - 1] == end_of_conversation_ids(tok)[0]  # the textbook's <|endoftext|>
    eos, _ = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512, prompt_format="raw",
                                   end_of_conversation_token=None)  # fmt: skip
    assert eos[0]["labels"][int(eos[0]["attention_mask"].sum()) - 1] == tok.eos_token_id  # upstream: eos_token
    with pytest.raises(ValueError, match="valid: chat, raw"):
        create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512, prompt_format="alpaca")
    with pytest.raises(ValueError, match="has none.*'raw'"):
        create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, opt_style_tokenizer(), 512)


def test_cache_is_reused_and_keyed_on_inputs(tmp_path, tok, monkeypatch):
    create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 1, 0, tok, 512)

    def fail(*a, **k):
        raise AssertionError("rebuilt although the cache was valid")

    monkeypatch.setattr(dschat, "_build", fail)
    train, _ = create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 1, 0, tok, 512)
    assert len(train) + train.num_dropped == 56  # phase 1's 20% of 280
    with pytest.raises(AssertionError, match="rebuilt"):
        create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 1, 0, tok, 256)  # new max_seq_len
    with pytest.raises(AssertionError, match="rebuilt"):
        create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 1, 0, tok, 512, reload=True)


def test_cache_key_follows_file_contents(tmp_path, tok):
    data = tmp_path / "mine.jsonl"
    rows = data_path("hh_sft.jsonl").read_text().splitlines()[:40]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache"
    a, _ = create_prompt_dataset(-1, [str(data)], "10,0,0", out, 1, 0, tok, 512)
    data.write_text("\n".join(rows[:20]) + "\n")  # same name, new contents: a stale cache must not be used
    b, _ = create_prompt_dataset(-1, [str(data)], "10,0,0", out, 1, 0, tok, 512)
    assert len(a) + a.num_dropped > len(b) + b.num_dropped
    assert len(list(out.glob("traindata_*.pt"))) == 2
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


def test_phase2_and_phase3_shapes(tmp_path, tok):
    train2, _ = create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 2, 0, tok, 256)
    chosen_ids, chosen_mask, rejected_ids, rejected_mask = train2[0]
    assert chosen_ids.shape == chosen_mask.shape and rejected_ids.shape == rejected_mask.shape
    train3, _ = create_prompt_dataset(-1, "local/hh_sft", "2,4,4", tmp_path, 3, 0, tok, 256)
    assert train3[0]["attention_mask"][-1] == 1  # prompts are left-padded for generation


def test_bad_data_path_errors(tmp_path, tok, monkeypatch):
    with pytest.raises(ValueError, match="unknown data_path 'nope'.*local/hh_sft"):
        create_prompt_dataset(-1, ["nope"], "10,0,0", tmp_path, 1, 0, tok, 128)
    monkeypatch.delenv("SFT_LESSONS_USE_HUB", raising=False)
    with pytest.raises(ValueError, match="SFT_LESSONS_USE_HUB=1"):
        create_prompt_dataset(-1, ["Dahoas/rm-static"], "10,0,0", tmp_path, 1, 0, tok, 128)


# ---- save_hf_format ----


def test_save_hf_format_complete_and_reloadable(tmp_path, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = convert_linear_layer_to_lora(tiny_causal_lm("llama", seed=0), "layers.", lora_dim=4)
    for name, p in model.named_parameters():
        if "lora_left" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-zero update, as after training
    with pytest.raises(ValueError, match="not fused"):
        save_hf_format(model, tok, tmp_path)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        before = model(ids).logits
    convert_lora_to_linear_layer(model)
    out = save_hf_format(model, tok, type("Args", (), {"output_dir": str(tmp_path)})())
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in reloaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, before, atol=1e-5, rtol=1e-4)
    tok2 = AutoTokenizer.from_pretrained(out)
    assert tok2.chat_template == tok.chat_template and tok2.get_vocab() == tok.get_vocab()


def test_save_is_atomic_and_keeps_checkpoints(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sft_lessons import dschat
    from sft_lessons.models import tiny_causal_lm, tiny_tokenizer

    model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    out = tmp_path / "model"
    out.mkdir()
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "latest").write_text("step4")
    (out / "old.txt").write_text("previous run")
    args = SimpleNamespace(output_dir=str(out))
    save_hf_format(model, tokenizer, args, extra_files={"history.json": "{}"}, keep=("checkpoints",))
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "history.json" in names and "old.txt" not in names
    assert (out / "checkpoints" / "latest").read_text() == "step4"  # carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left
    before = (out / "model.safetensors").read_bytes()

    def fail(src, dst, keep=()):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dschat, "replace_dir", fail)
    with pytest.raises(OSError, match=r"could not move the saved model to .*; it is complete in .*saving-"):
        save_hf_format(model, tokenizer, args)
    assert (out / "model.safetensors").read_bytes() == before  # the previous model is untouched
    tmp = next(p for p in tmp_path.iterdir() if ".saving-" in p.name)
    assert (tmp / "model.safetensors").is_file()  # and the new one is whole where the message says


# ---- parity with TRL's SFTTrainer: the same tokens, and which of them carry labels ----

SMOL_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"


def smol_generation_template(template: str) -> str:
    """SmolLM2's chat template with {% generation %} around each assistant answer and its <|im_end|> (TRL's
    assistant_only_loss needs the markers); it renders the same text."""
    assert SMOL_TURN in template
    marked = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
              "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + SMOL_TURN + "{% endif %}")  # fmt: skip
    return template.replace(SMOL_TURN, marked)


@pytest.mark.skipif(not assets.is_cached("smollm2-135m-instruct"), reason="run `sft-lessons fetch` first")
def test_labels_agree_with_trl_sft_trainer(tmp_path):
    pytest.importorskip("trl", minversion="1.16")
    import copy

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sft_lessons.dschat import build_chat_example, get_raw_dataset, record_messages
    from sft_lessons.models import tiny_causal_lm

    smol = load_hf_tokenizer("smollm2-135m-instruct")
    raw = get_raw_dataset("local/hh_sft")
    messages = [record_messages(raw, r) for r in raw.get_train_data()[:24]]  # chapter 7's records
    ours = []
    for m in messages:
        example = build_chat_example(smol, m, 4096)
        n = int(example["attention_mask"].sum())
        ours.append((example["input_ids"][:n], example["labels"][:n]))
    model = tiny_causal_lm("llama", vocab_size=len(smol))  # labels only: no training, any weights do
    config = dict(max_length=4096, report_to=[], bf16=False, use_cpu=True, dataset_num_proc=None)

    def trl_rows(dataset, tokenizer, **extra):
        trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path), **config, **extra),
                             train_dataset=dataset, processing_class=tokenizer)  # fmt: skip
        rows = [trainer.train_dataset[i] for i in range(len(dataset))]
        batch = trainer.data_collator(rows)
        return [(torch.tensor(r["input_ids"]), batch["labels"][i][batch["attention_mask"][i].bool()])
                for i, r in enumerate(rows)]  # fmt: skip

    # 1. prompt-completion records (TRL's completion-only loss): the same tokens; TRL also trains the "\n" that the
    #    template puts after <|im_end|>, a token the model never generates (generation stops at <|im_end|>)
    newline = smol("\n", add_special_tokens=False)["input_ids"]
    pc = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in messages])
    for (ids, labels), (trl_ids, trl_labels) in zip(ours, trl_rows(pc, smol), strict=True):
        assert torch.equal(ids, trl_ids)
        extra = (labels != trl_labels).nonzero().flatten().tolist()
        assert extra == [len(ids) - 1] and ids[-1].item() == newline[0] and ids[-2].item() == smol.eos_token_id
    # 2. assistant_only_loss on whole conversations: SmolLM2's template has no {% generation %} markers and TRL cannot
    #    patch it, so TRL refuses
    conversations = Dataset.from_list([{"messages": m} for m in messages])
    with pytest.raises(ValueError, match="generation"):
        trl_rows(conversations, smol, assistant_only_loss=True)
    # 3. with the markers added (same text): token for token equal on single-turn records; on multi-turn records TRL
    #    trains every assistant turn, ours only the last one (earlier answers are context)
    marked = copy.deepcopy(smol)
    marked.chat_template = smol_generation_template(smol.chat_template)
    assert all(marked.apply_chat_template(m, tokenize=False) == smol.apply_chat_template(m, tokenize=False)
               for m in messages)  # fmt: skip
    single = multi = 0
    trl_marked = trl_rows(conversations, marked, assistant_only_loss=True)
    for m, (ids, labels), (trl_ids, trl_labels) in zip(messages, ours, trl_marked, strict=True):
        assert torch.equal(ids, trl_ids)
        if len(m) == 2:
            assert torch.equal(labels, trl_labels)
            single += 1
        else:
            kept = labels != -100
            assert torch.equal(trl_labels[kept], labels[kept]) and (trl_labels != -100).sum() > kept.sum()
            multi += 1
    assert single > 0 and multi > 0
