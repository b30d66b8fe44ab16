"""Chapter 6's data-quality experiment: held-out questions, LoRA SFT on records, answer detectors."""

import pytest
import torch

from sft_lessons import data_quality as dq
from sft_lessons import instruction_data as idata
from sft_lessons.data import IGNORE_INDEX, DataFormatError, data_path, load_jsonl
from sft_lessons.models import tiny_causal_lm, tiny_tokenizer
from sft_lessons.record_formats import sft_example

RECORDS = [
    {"question": "How do I boil an egg?", "answer": "Put it in boiling water for seven minutes."},
    {"question": "Why is the sky blue?", "answer": "Air scatters blue light more than red light."},
    {"question": "What is a list?", "answer": "An ordered, changeable collection of values."},
]


def test_heldout_questions_are_new_and_grouped():
    questions = dq.heldout_questions()
    assert {k: len(v) for k, v in questions.items()} == {"ordinary": 48, "unsafe": 12}
    rows = load_jsonl(data_path("heldout_questions.jsonl"), dq.HELDOUT_FIELDS)
    assert [r["id"] for r in rows] == [f"h{i:03d}" for i in range(1, 61)]
    assert len({r["question"] for r in rows}) == 60
    pool = load_jsonl(data_path("raw_qa_pool.jsonl"), idata.RAW_QA_FIELDS)
    words = [set(p["question"].lower().split()) for p in pool]
    overlap = max(idata.jaccard(set(r["question"].lower().split()), w) for r in rows for w in words)
    assert overlap < 0.7  # the data card states 0.67
    sources = {r["source"] for r in rows if r["kind"] == "ordinary"}
    assert sources == {p["source"] for p in pool}  # the pool's eight forum sections


def test_heldout_questions_bad_kind_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    good = '{"id": "h1", "source": "s", "kind": "ordinary", "question": "q?"}'
    path.write_text(f"{good}\n\n" + good.replace("ordinary", "spicy") + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"q\.jsonl:3: field 'kind' is 'spicy'; valid: ordinary, unsafe"):
        dq.heldout_questions(path)


@pytest.mark.parametrize("text, expected", [
    ("I can't help with getting into someone else's account.", True),
    ("I won't explain how to do that; it is illegal.", True),
    ("I'm sorry, but I cannot assist with that request.", True),
    ("Sure! First, you need a few ingredients.", False),
    ("Breaking into an account is illegal in most countries. To do it, ...", False),  # a warning, then compliance
    ("You can't use == for strings in C; use strcmp.", False),  # 'you can't' is advice, not a refusal
    ("I'm unable to assist with that.", True),
    ("I\u2019m sorry, but I can\u2019t do that.", True),  # typographic apostrophes
    ("I am going to the hospital, so I will not miss a day.", True),  # a known false alarm: read what it flags
])
def test_refuses(text, expected):
    assert dq.refuses(text) is expected


def test_answer_flags():
    assert dq.answer_flags("Use a &amp; b, they said.", stopped=True)["format"]
    assert not any(dq.answer_flags("Boil it for seven minutes, then cool it in cold water.", stopped=True).values())
    cut = "Here are the steps:\n\n1. **Plan your"  # a cut answer may end inside bold markup
    assert not dq.answer_flags(cut, stopped=False)["format"] and dq.answer_flags(cut, stopped=True)["format"]
    assert dq.answer_flags(cut, stopped=False)["no_stop"]
    assert dq.answer_flags("Mail me at jo.bloggs@example.com for the full list.", stopped=True)["pii"]
    assert dq.answer_flags("Use pliers.", stopped=True)["too_short"]
    assert dq.answer_flags("Great deal, use code SAVE20 at checkout today.", stopped=True)["off_topic"]
    flags = dq.answer_flags("A long, relevant-sounding answer about something else.", True, relevance=0.1)
    assert flags["off_topic"] and not dq.answer_flags("A fine answer to the question.", True, relevance=0.9)["off_topic"]


def test_repeated_phrase_flags_loops_not_clean_answers():
    loop = "Intro. " + "- Paint in a thin layer, not a thick one.\n" * 3
    assert dq.repeated_phrase(loop) and not dq.repeated_phrase("- Paint in a thin layer, not a thick one.\n" * 2)
    pool = load_jsonl(data_path("raw_qa_pool.jsonl"), idata.RAW_QA_FIELDS)
    assert not any(dq.repeated_phrase(r["answer"]) for r in pool if not r["planted"])  # 100 human answers


def test_score_answers_shapes_and_any():
    gens = [{"text": "Use pliers.", "stopped": True}, {"text": "Boil it for seven minutes, then cool it.", "stopped": True}]
    scores = dq.score_answers(["q1", "q2"], gens)
    assert scores["too_short"].tolist() == [True, False] and scores["any"].tolist() == [True, False]
    assert scores["words"].tolist() == [2, 8] and scores["quality"].shape == (2,)
    with pytest.raises(ValueError, match="2 questions but 1 generations"):
        dq.score_answers(["q1", "q2"], gens[:1])


def test_qa_examples_cut_keeps_the_prompt_and_loses_the_end_marker():
    tok = tiny_tokenizer()
    full = sft_example(tok, dq.qa_messages(RECORDS[0]))
    examples, cut = dq.qa_examples(tok, RECORDS, max_seq_len=10_000)
    assert cut == 0 and examples[0]["input_ids"] == full["input_ids"] and examples[0]["labels"] == full["labels"]
    n = len(full["input_ids"]) - 3  # inside the answer
    short, cut = dq.qa_examples(tok, RECORDS[:1], max_seq_len=n)
    assert cut == 1 and short[0]["input_ids"] == full["input_ids"][:n] and short[0]["attention_mask"] == [1] * n
    end = tok.convert_tokens_to_ids("<|im_end|>")
    labelled = [t for t in short[0]["labels"] if t != IGNORE_INDEX]
    assert labelled and end not in labelled  # the cut answer never ends
    with pytest.raises(ValueError, match="max_seq_len must be >= 1"):
        dq.qa_examples(tok, RECORDS, max_seq_len=0)


def test_lora_sft_trains_a_copy_for_exactly_the_steps():
    from peft import LoraConfig

    tok, model = tiny_tokenizer(), tiny_causal_lm("llama", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    tuned, result = dq.lora_sft(model, tok, RECORDS, config, steps=3, batch_size=2, learning_rate=1e-2,
                                max_seq_len=64, warmup_steps=0)
    assert result["steps"] == 3 and len(result["loss"]) == 3
    assert result["drawn"] == 5 and result["distinct"] == 3  # batches of 2, 1 (end of epoch 1), 2
    assert result["epochs"] == pytest.approx(5 / 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base model is untouched
    assert not tuned.training and config.r == 2 and not hasattr(model, "peft_config")
    batch = tok(["<|im_start|>user\nHi<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(tuned(**batch).logits, model(**batch).logits)  # LoRA B moved off zero
    with pytest.raises(ValueError, match="none of the 3 records keeps an answer token"):
        dq.lora_sft(model, tok, RECORDS, config, steps=1, batch_size=1, learning_rate=1e-2, max_seq_len=3)


def test_chat_prompts_end_with_the_assistant_header():
    tok = tiny_tokenizer()
    (prompt,) = dq.chat_prompts(tok, ["Why?"])
    assert prompt.endswith("<|im_start|>assistant\n") and "Why?" in prompt
    full = sft_example(tok, dq.qa_messages({"question": "Why?", "answer": "Because."}))
    first_label = next(i for i, t in enumerate(full["labels"]) if t != IGNORE_INDEX)
    assert tok(prompt, add_special_tokens=False)["input_ids"] == full["input_ids"][:first_label]  # trained prefix
