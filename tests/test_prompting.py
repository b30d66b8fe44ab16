import pytest
import torch

from sft_lessons.models import tiny_causal_lm, tiny_tokenizer
from sft_lessons.prompting import (
    PromptTemplate,
    Verbalizer,
    accuracy,
    aggregate_word_score,
    chat_template,
    contextual_calibration,
    encode,
    next_token_log_probs,
    score_label_words,
    zero_shot_classify,
)

TEXTS = ["great film", "an awful, dull mess that I hated", "ok"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("llama")


def hand_word_log_prob(model, tok, prompt, word):
    """Unbatched, unpadded: sum over the word's tokens of log P(token | prompt, earlier word tokens)."""
    pid, wid = encode(tok, prompt), encode(tok, word)
    with torch.no_grad():
        logp = model(torch.tensor([pid + wid])).logits.log_softmax(-1)[0]  # (T, V)
    return [logp[len(pid) - 1 + j, wid[j]].item() for j in range(len(wid))]


def test_template_filling():
    t = PromptTemplate("Review: [X]\nSentiment:")
    assert t.split("nice") == ("Review: nice\nSentiment:", "")
    assert t.fill("nice", " positive") == "Review: nice\nSentiment: positive"
    assert t.kind == "prefix"
    # the space before [Z] belongs to the label word, so both spellings give the same prompt
    assert PromptTemplate("Review: [X]\nSentiment: [Z]").split("nice") == t.split("nice")
    cloze = PromptTemplate("[X] Overall, it was a [Z] movie.")
    assert cloze.kind == "cloze"
    assert cloze.split("Fun.") == ("Fun. Overall, it was a", " movie.")
    assert cloze.fill("Fun.", " great") == "Fun. Overall, it was a great movie."
    assert PromptTemplate("Say [X]").split("[Z] is literal here") == ("Say [Z] is literal here", "")


@pytest.mark.parametrize("text", ["Review: {x}", "[X] and [X]"])
def test_template_without_one_input_slot(text):
    with pytest.raises(ValueError, match=r"input slot \[X\] exactly once"):
        PromptTemplate(text)


def test_template_with_two_answer_slots():
    with pytest.raises(ValueError, match=r"\[Z\] at most once"):
        PromptTemplate("[X] [Z] [Z]")


@pytest.mark.parametrize("words", [{}, [], {0: []}, [[" good"], []]])
def test_empty_verbalizer(words):
    with pytest.raises(ValueError, match="empty verbalizer|no label words"):
        Verbalizer(words)


def test_verbalizer_validation(tok):
    with pytest.raises(ValueError, match="labels must be 0..1"):
        Verbalizer({1: [" good"], 2: [" bad"]})
    with pytest.raises(ValueError, match="aggregate='max'; valid: sum, mean"):
        Verbalizer({0: [" bad"], 1: [" good"]}, aggregate="max")
    with pytest.raises(ValueError, match="non-empty string"):
        Verbalizer({0: [""], 1: [" good"]})
    v = Verbalizer([" bad", [" good", " great"]])
    assert v.label_words == ((" bad",), (" good", " great"))
    assert v.first_words() == [" bad", " good"]


def test_label_word_that_tokenizes_to_nothing(model, tok):
    # a tokenizer that maps " good" to no ids at all (as some tokenizers do with unknown or stripped text)
    class Dropping:
        pad_token_id = tok.pad_token_id

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [] if text == " good" else tok(text, add_special_tokens=False)["input_ids"]}

    v = Verbalizer({0: [" bad"], 1: [" good"]})
    with pytest.raises(ValueError, match="' good' of label 1 tokenizes to nothing"):
        score_label_words(model, Dropping(), ["Review: ok"], v)


def test_multi_token_scoring_matches_hand_computation(model, tok):
    prompts = [PromptTemplate("Review: [X]\nSentiment:").split(t)[0] for t in TEXTS]
    words = {0: [" negative", " bad"], 1: [" positive"]}
    assert all(len(encode(tok, w)) > 1 for ws in words.values() for w in ws)  # really multi-token
    for aggregate in ("sum", "mean"):
        v = Verbalizer(words, aggregate=aggregate)
        got = score_label_words(model, tok, prompts, v, batch_size=2)  # padded batches
        expected = torch.zeros(len(prompts), 2)
        for i, p in enumerate(prompts):
            for label, ws in enumerate(v.label_words):
                per_word = [torch.tensor(hand_word_log_prob(model, tok, p, w)) for w in ws]
                agg = [lp.sum() if aggregate == "sum" else lp.mean() for lp in per_word]
                expected[i, label] = torch.stack(agg).logsumexp(0)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_agree(model, tok):
    v = Verbalizer({0: [" negative"], 1: [" positive"]})
    left = score_label_words(model, tok, TEXTS, v, batch_size=3, padding_side="left")
    right = score_label_words(model, tok, TEXTS, v, batch_size=3, padding_side="right")
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="padding_side='middle'"):
        score_label_words(model, tok, TEXTS, v, padding_side="middle")


def test_single_token_fast_path_equals_pair_path(model, tok):
    # SmolLM-like single-token words: pick two tokens of the tiny vocab that encode alone
    words = [w for w in (" the", " a", "P", "N") if len(encode(tok, w)) == 1][:2]
    v = Verbalizer({0: [words[0]], 1: [words[1]]})
    assert v.is_single_token(tok)
    fast = score_label_words(model, tok, TEXTS, v)
    logp = next_token_log_probs(model, tok, TEXTS)  # (n, V)
    assert logp.shape == (3, model.config.vocab_size)
    ids = [encode(tok, w)[0] for w in words]
    torch.testing.assert_close(fast, logp[:, ids])
    slow = score_label_words(model, tok, TEXTS, v, suffix=".")  # suffix forces the pair path
    hand = [[sum(hand_word_log_prob(model, tok, p, w + ".")) for w in words] for p in TEXTS]
    torch.testing.assert_close(slow, torch.tensor(hand), atol=1e-5, rtol=1e-5)


def test_aggregate_word_score():
    lp = torch.tensor([-1.0, -3.0])
    assert aggregate_word_score(lp, "sum").item() == -4.0
    assert aggregate_word_score(lp, "mean").item() == -2.0
    with pytest.raises(ValueError, match="valid: sum, mean"):
        aggregate_word_score(lp, "max")


def test_contextual_calibration():
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    cf = torch.log(torch.tensor([0.65, 0.35]))
    cal = contextual_calibration(scores, cf).exp()
    assert scores.argmax(-1).tolist() == [0, 0, 1]
    # by hand: 0.7/0.65 > 0.3/0.35, but 0.6/0.65 < 0.4/0.35: the second input flips to label 1
    assert cal.argmax(-1).tolist() == [0, 1, 1]
    torch.testing.assert_close(cal.sum(-1), torch.ones(3))
    # the content-free input itself becomes uniform
    torch.testing.assert_close(contextual_calibration(cf[None], cf).exp(), torch.full((1, 2), 0.5))


def test_zero_shot_classify_and_accuracy(model, tok):
    t = PromptTemplate("[X] It was [Z].")
    v = Verbalizer({0: [" bad"], 1: [" good"]})
    out = zero_shot_classify(model, tok, TEXTS, t, v, batch_size=2)
    # by hand: score " bad." / " good." after "<text> It was", normalise, take the argmax
    scores = score_label_words(model, tok, [f"{x} It was" for x in TEXTS], v, suffix=".")
    torch.testing.assert_close(out.log_probs, scores.log_softmax(-1), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.predictions, out.log_probs.argmax(-1)) and out.predictions.shape == (3,)
    cal = zero_shot_classify(model, tok, TEXTS, t, v, calibrate=True)
    content_free = score_label_words(model, tok, ["N/A It was"], v, suffix=".")
    torch.testing.assert_close(
        cal.log_probs, contextual_calibration(scores, content_free), atol=1e-5, rtol=1e-5
    )
    assert torch.equal(cal.predictions, cal.log_probs.argmax(-1))
    assert not torch.allclose(cal.log_probs, out.log_probs)  # calibration changed something
    assert accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        accuracy([1, 0], [1, 1, 1])
    with pytest.raises(ValueError, match=r"put \[X\] before \[Z\]"):
        zero_shot_classify(model, tok, TEXTS, PromptTemplate("It was [Z]: [X]"), v)


def test_chat_template_keeps_the_input_slot(tok):
    t = chat_template(tok, "Is this review positive or negative?\n[X]")
    assert t.text.endswith("<|im_start|>assistant\n") and "[X]" in t.text
    assert t.split("fun")[0].count("fun") == 1


def test_soft_prompt_trains_only_the_prompt(tok):
    from sft_lessons.prompting import soft_prompt_model, train_soft_prompt

    base = tiny_causal_lm("llama", seed=0)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    torch.manual_seed(0)  # the soft prompt's random initialisation
    peft_model = soft_prompt_model(base, num_virtual_tokens=4)
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    initial = prompt.detach().clone()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0] is prompt and prompt.shape == (4, base.config.hidden_size)
    t, v = PromptTemplate("Review: [X]\nSentiment:"), Verbalizer({0: [" bad"], 1: [" good"]})
    prompts = [t.split(x)[0] for x in TEXTS]

    def label_loss():  # -log P(" good" | the first prompt), scored independently of the training loop
        return -score_label_words(peft_model, tok, prompts[:1], v)[0, 1].item()

    start = label_loss()
    # one text: every step sees the same batch, so the training losses are comparable step to step
    losses = train_soft_prompt(peft_model, tok, TEXTS[:1], [1], t, v, steps=10, batch_size=2, lr=0.1, seed=0)
    assert len(losses) == 10 and all(loss > 0 for loss in losses)
    assert losses[-1] < losses[0] - 0.05  # the training loss went down ...
    assert label_loss() < start - 0.2  # ... and so did the label word's loss when scored afresh
    assert not torch.allclose(prompt, initial)  # the soft prompt moved ...
    for n, p in peft_model.get_base_model().named_parameters():  # ... the model did not
        torch.testing.assert_close(p, before[n], msg=n, atol=0, rtol=0)
    # scoring goes through peft's forward (virtual tokens prepended); right padding is chosen automatically
    scores = score_label_words(peft_model, tok, prompts, v, batch_size=2)
    one_by_one = torch.cat([score_label_words(peft_model, tok, [p], v) for p in prompts])
    torch.testing.assert_close(scores, one_by_one, atol=1e-5, rtol=1e-5)


def test_cached_batch_inputs_layout():
    from sft_lessons.prompting import cached_batch_inputs

    out = cached_batch_inputs([[5, 6, 7], [8]], pad_id=0, prefix_length=4)
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 1]]
    assert out["position_ids"].tolist() == [[4, 5, 6], [4, 4, 4]]  # real tokens continue after the prefix
    right = cached_batch_inputs([[5, 6, 7], [8]], pad_id=0, padding_side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]] and right["position_ids"] is None


def test_calibration_averages_content_free_probabilities_before_normalising():
    from sft_lessons.prompting import CONTENT_FREE, contextual_calibration

    assert CONTENT_FREE == ("N/A", "", "[MASK]")
    cf = torch.log(torch.tensor([[0.2, 0.2], [0.6, 0.0001]]))  # raw label-word probabilities of two inputs
    expected = torch.tensor([0.4, 0.10005]) / 0.50005  # mean of the raw probabilities, then renormalised
    scores = torch.log(torch.tensor([[0.5, 0.5]]))
    got = contextual_calibration(scores, cf).exp()
    want = (torch.tensor([0.5, 0.5]) / expected) / (torch.tensor([0.5, 0.5]) / expected).sum()
    torch.testing.assert_close(got[0], want)
