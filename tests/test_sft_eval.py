import math

import pytest
import torch

from sft_lessons.data import data_path, load_jsonl
from sft_lessons.dschat import create_prompt_dataset, opt_style_tokenizer
from sft_lessons.models import tiny_causal_lm, tiny_tokenizer
from sft_lessons.padding import trim_padding
from sft_lessons.sft_eval import (
    clean_stop,
    first_stop,
    follows_house_style,
    generate_responses,
    house_style_problems,
    perplexity,
    style_flags,
    style_metrics,
)

GOOD = " Answer: Ice floats because water expands when it freezes, making ice less dense.\n- Floating ice insulates lakes"


def test_house_style_matches_the_data_card():
    records = load_jsonl(data_path("hh_sft.jsonl"))
    assert all(follows_house_style(r["chosen"]) for r in records)
    assert not any(follows_house_style(r["rejected"]) for r in records)


@pytest.mark.parametrize(
    "text, problem",
    [
        (GOOD + "\n\nHuman: thanks!", "another turn"),
        (GOOD.replace(" Answer: ", " "), "line 1"),
        (" Answer: Too short here.\n- one two three", "words"),
        (GOOD.replace("freezes,", "freezes. Also"), "more than one sentence"),
        (GOOD + "\n- a\n- b c d\n- e f g", "lines"),
        (GOOD + ".", "period"),
        (GOOD + " ", "trailing whitespace"),
        (GOOD.split("\n")[0], "1 lines"),
    ],
)
def test_house_style_problems_name_the_rule(text, problem):
    problems = house_style_problems(text)
    assert any(problem in p for p in problems), problems
    assert house_style_problems(GOOD) == []


def test_clean_stop():
    assert clean_stop(GOOD, True)
    assert not clean_stop(GOOD, False)  # ran out of tokens
    assert not clean_stop(GOOD + "\n\nHuman: more?", True)  # invented the next turn


def test_first_stop():
    assert first_stop([5, 6, 7, 8, 7, 8], [[7, 8], [9]]) == 2
    assert first_stop([5, 6, 0, 7, 8], [[7, 8], [0]]) == 2
    assert first_stop([5, 6], [[7, 8]]) is None


def test_generate_responses_batched_stops():
    tok = tiny_tokenizer()
    model = tiny_causal_lm("llama", seed=0)
    prompts = ["Human: hi", "Human: what is the capital of France? Assistant:"]
    free = generate_responses(model, tok, prompts, [[319]], max_new_tokens=8)
    assert len(free) == 2 and all(r["new_tokens"] <= 8 for r in free)
    assert tok.padding_side == "right"  # restored after generation
    # this model repeats ':' (id 28), which is also the prompt's last token
    assert tok(prompts[1])["input_ids"][-1] == 28 and free[1]["text"].startswith("::")
    one = generate_responses(model, tok, prompts[1:], [[28]], max_new_tokens=8)[0]
    assert one["stopped"] and one["new_tokens"] == 0
    # a two-token marker must match generated tokens only, not the prompt's last token + the first new one
    two = generate_responses(model, tok, prompts[1:], [[28, 28]], max_new_tokens=8)[0]
    assert two["stopped"] and two["new_tokens"] == 0 and two["text"] == ""
    three = generate_responses(model, tok, prompts[1:], [[28, 28, 28]], max_new_tokens=8)[0]
    assert three["stopped"] and three["new_tokens"] == 0


def test_style_metrics():
    results = [dict(text=GOOD, stopped=True), dict(text="rambling", stopped=False)]
    assert style_metrics(results) == {"compliance": 0.5, "clean_stops": 0.5, "n": 2}
    complies, stops = style_flags(results)
    assert len(complies) == len(stops) == 2 and sum(complies) == sum(stops) == 1


def test_perplexity_is_token_weighted(tmp_path):
    tok = opt_style_tokenizer()
    model = tiny_causal_lm("llama", seed=0, vocab_size=len(tok))
    _, evaluation = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512, prompt_format="raw")
    evaluation.tensors = {k: v[:3] for k, v in evaluation.tensors.items()}
    batch = trim_padding(dict(evaluation.tensors))
    with torch.no_grad():
        loss = model(**batch).loss  # HF averages over all labelled tokens of the one batch
    assert perplexity(model, evaluation, batch_size=3) == pytest.approx(math.exp(loss), rel=1e-5)
    assert perplexity(model, evaluation, batch_size=1) == pytest.approx(math.exp(loss), rel=1e-5)


def test_answer_token_losses_sum_to_hf_loss(tmp_path):
    from sft_lessons.sft_eval import answer_token_losses

    tok = opt_style_tokenizer()
    model = tiny_causal_lm("llama", seed=0, vocab_size=len(tok))
    _, evaluation = create_prompt_dataset(-1, "local/hh_sft", "10,0,0", tmp_path, 1, 0, tok, 512, prompt_format="raw")
    batch = trim_padding({k: v[:3] for k, v in evaluation.tensors.items()})
    model.train()  # dropout would make the sums random; the function scores in eval mode and restores the mode
    sums, counts = answer_token_losses(model, batch)
    assert sums.shape == counts.shape == (3,) and (counts > 0).all()
    assert model.training  # restored after scoring
    with torch.no_grad():
        hf = model.eval()(**batch).loss  # HF: the mean over every labelled token of the batch
    assert sums.sum() / counts.sum() == pytest.approx(float(hf), rel=1e-5)
    row = {k: v[:1] for k, v in batch.items()}
    assert answer_token_losses(model, row)[0][0] == pytest.approx(sums[0], rel=1e-5)  # rows do not interact
