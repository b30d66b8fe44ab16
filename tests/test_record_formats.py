import pytest

from sft_lessons import record_formats as rf
from sft_lessons.data import DataFormatError, data_path, load_jsonl

ALPACA = [
    {"id": "a1", "instruction": "Translate into French.", "input": "Good morning", "output": "Bonjour"},
    {"id": "a2", "instruction": "List three primes.", "input": "", "output": "2, 3, 5"},
]
CHAT = {
    "id": "c1",
    "messages": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
    ],
}


@pytest.mark.parametrize("record", ALPACA, ids=lambda r: r["id"])
def test_alpaca_round_trip(record):
    msgs = rf.alpaca_to_messages(record)
    assert msgs["id"] == record["id"] and [m["role"] for m in msgs["messages"]] == ["user", "assistant"]
    assert rf.messages_to_alpaca(msgs) == record


def test_alpaca_missing_input_and_the_lossy_case():
    assert rf.messages_to_alpaca(rf.alpaca_to_messages({"instruction": "Hi", "output": "Yo"}))["input"] == ""
    lossy = {"instruction": "Read this.\n\nThen answer.", "input": "", "output": "ok"}
    back = rf.messages_to_alpaca(rf.alpaca_to_messages(lossy))
    assert back != lossy and back["instruction"] + "\n\n" + back["input"] == lossy["instruction"]
    single = {"messages": [{"role": "user", "content": "A\n\nB\n\nC"}, {"role": "assistant", "content": "x"}]}
    assert (
        rf.alpaca_to_messages(rf.messages_to_alpaca(single)) == single
    )  # messages -> Alpaca -> messages is exact


def test_sharegpt_round_trip_and_aliases():
    share = rf.messages_to_sharegpt(CHAT)
    assert share["conversations"][0] == {"from": "human", "value": "Hi!"} and share["id"] == "c1"
    assert rf.sharegpt_to_messages(share) == CHAT
    belle = {"conversations": [{"from": "human", "value": "q"}, {"from": "assistant", "value": "a"}]}
    assert rf.sharegpt_to_messages(belle)["messages"][1]["role"] == "assistant"


def test_rm_static_round_trip_multi_turn():
    rm = rf.messages_to_rm_static(CHAT, rejected=" 8")
    assert (
        rm["prompt"]
        == "\n\nHuman: Hi!\n\nAssistant: Hello. How can I help?\n\nHuman: Name a prime.\n\nAssistant:"
    )
    assert rm["chosen"] == rm["response"] == " 7"
    back = rf.rm_static_to_messages(rm)
    assert back["rejected"] == " 8" and rf.messages_to_rm_static(back) == rm
    assert {k: v for k, v in back.items() if k != "rejected"} == CHAT


def test_rm_static_round_trip_on_bundled_hh_data():
    records = load_jsonl(data_path("hh_sft.jsonl"), rf.FORMAT_FIELDS["rm_static"])
    for rec in records:
        assert rf.messages_to_rm_static(rf.rm_static_to_messages(rec)) == rec, rec["id"]


@pytest.mark.parametrize("src", rf.FORMATS)
@pytest.mark.parametrize("dst", rf.FORMATS)
def test_convert_every_pair_round_trips(src, dst):
    single = {
        "id": "s",
        "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
    }
    record = rf.convert([dict(single, rejected=" B.")], "messages", src)[0]
    there = rf.convert([record], src, dst)
    assert rf.convert(there, dst, src) == [record]
    assert rf.detect_format(there[0]) == dst


def test_errors_name_record_and_field():
    with pytest.raises(rf.ConversionError, match=r"record 1 \(id 'c1'\): field 'messages': Alpaca holds one"):
        rf.convert([rf.alpaca_to_messages(ALPACA[0]), CHAT], "messages", "alpaca")
    with pytest.raises(rf.ConversionError, match=r"record 0: field 'output': missing"):
        rf.alpaca_to_messages({"instruction": "x"})
    bad_role = {"conversations": [{"from": "bot", "value": "x"}]}
    with pytest.raises(
        rf.ConversionError, match=r"field 'conversations\[0\]\.from': got 'bot'; valid: human, gpt"
    ):
        rf.sharegpt_to_messages(bad_role)
    with pytest.raises(
        rf.ConversionError, match=r"field 'rejected': a preference record needs a worse answer"
    ):
        rf.messages_to_rm_static({k: v for k, v in CHAT.items()})
    system = {"messages": [{"role": "system", "content": "s"}, *CHAT["messages"]]}
    with pytest.raises(rf.ConversionError, match=r"field 'messages\[0\]\.role': rm-static alternates"):
        rf.messages_to_rm_static(system, rejected=" x")
    with pytest.raises(rf.ConversionError, match=r"field 'instruction': expected str, got int"):
        rf.alpaca_to_messages({"instruction": 3, "output": "x"})
    with pytest.raises(rf.ConversionError, match=r"field 'prompt'"):
        rf.rm_static_to_messages({"prompt": "Human: hi", "response": " a", "chosen": " a", "rejected": " b"})
    with pytest.raises(
        ValueError, match=r"unknown format 'chatml'; valid: alpaca, sharegpt, messages, rm_static"
    ):
        rf.convert([], "alpaca", "chatml")


def test_malformed_jsonl_rejected_with_file_and_line(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    with pytest.raises(DataFormatError, match=r"alpaca.jsonl:2: missing field 'output'"):
        load_jsonl(path, rf.FORMAT_FIELDS["alpaca"])


def test_sft_example_masks_everything_but_the_answers():
    from sft_lessons.models import tiny_tokenizer

    tok = tiny_tokenizer()
    ex = rf.sft_example(tok, CHAT["messages"])
    assert len(ex["input_ids"]) == len(ex["labels"])
    kept = [t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != rf.IGNORE_INDEX]
    assert tok.decode(kept) == "Hello. How can I help?<|im_end|>7<|im_end|>"
    assert ex["labels"][0] == rf.IGNORE_INDEX and ex["text"].startswith("<|im_start|>user")
    last = rf.sft_example(tok, CHAT["messages"], train_on="last")  # rm-static: earlier turns are context
    assert last["input_ids"] == ex["input_ids"]
    kept = [t for t, label in zip(last["input_ids"], last["labels"], strict=True) if label != rf.IGNORE_INDEX]
    assert tok.decode(kept) == "7<|im_end|>"
    assert rf.mark_targets(tok, last["input_ids"], last["labels"]).endswith("<|im_start|>assistant\n«7<|im_end|>»\n")
    with pytest.raises(ValueError, match="valid: all, last"):
        rf.sft_example(tok, CHAT["messages"], train_on="first")


def test_token_stats():
    from sft_lessons.models import tiny_tokenizer

    rows = rf.token_stats(tiny_tokenizer(), ["abc", "番茄"])
    assert rows[0]["chars"] == 3 and rows[1]["tokens"] >= 2  # byte-level BPE: a CJK character is 3 bytes
    assert len(rf.PARALLEL_SAMPLES) >= 5


def test_rm_static_prompt_must_start_with_human_and_alternate():
    rec = {
        "prompt": "\n\nAssistant: hi\n\nHuman: q\n\nAssistant:",
        "response": " a",
        "chosen": " a",
        "rejected": " b",
    }
    with pytest.raises(rf.ConversionError, match=r"field 'prompt': turns must alternate from a Human turn"):
        rf.rm_static_to_messages(rec)
