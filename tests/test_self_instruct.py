import pytest

from sft_lessons import self_instruct as si
from sft_lessons.course.exercises import ROUGE_L_CASES
from sft_lessons.data import DataFormatError, data_path, load_jsonl


@pytest.fixture(scope="module")
def seeds():
    return load_jsonl(data_path("seed_tasks.jsonl"), si.SEED_TASK_FIELDS)


@pytest.fixture(scope="module")
def tiny():
    from sft_lessons.models import tiny_causal_lm, tiny_tokenizer

    return tiny_causal_lm("llama"), tiny_tokenizer()


@pytest.mark.parametrize("cand,ref,expected", ROUGE_L_CASES)
def test_rouge_l_hand_computed(cand, ref, expected):
    assert si.rouge_l(cand, ref) == pytest.approx(expected)


def test_lcs_and_tokens():
    assert si.rouge_tokens("Don't STOP-me now!") == ["don", "t", "stop", "me", "now"]
    assert si.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example
    assert si.lcs_length([], ["a"]) == 0
    assert si.max_rouge_l("write a poem", ["list primes", "write a short poem"]) == (
        pytest.approx(0.857142857),
        "write a short poem",
    )


def test_rouge_l_matches_rouge_score():
    from rouge_score import rouge_scorer  # in the dev extra: this parity test must run
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for cand, ref, _ in ROUGE_L_CASES:
        assert si.rouge_l(cand, ref) == pytest.approx(scorer.score(ref, cand)["rougeL"].fmeasure)


@pytest.mark.parametrize(
    "instruction,reason",
    [
        ("Summarise it.", "too_short"),
        ("Describe the image in one sentence.", "blocked_keyword"),
        ("Plot the data as a bar chart please.", "blocked_keyword"),
        ("Write a program that sorts a list.", "write_a_program"),
        ("¿Qué hora es ahora mismo?", "non_ascii"),
        ('"Quote" a famous person about hope.', "starts_with_punctuation"),
        ("Give the opposite of the given word.", "similar"),  # ROUGE-L 0.857 vs a seed
        ("Explain how a rainbow forms to a child.", None),
    ],
)
def test_instruction_filter_on_fixed_inputs(seeds, instruction, reason):
    pool = [s["instruction"] for s in seeds]
    assert si.instruction_rejection(instruction, pool) == reason
    assert si.instruction_rejection(" ".join(["word"] * 151), []) == "too_long"


def test_instance_filter():
    assert si.instance_rejection({"input": "x", "output": ""}) == "empty_output"
    assert si.instance_rejection({"input": "Paris", "output": "Paris"}) == "input_equals_output"
    assert si.instance_rejection({"input": "Here is a list:", "output": "1"}) == "ends_with_colon"
    assert si.instance_rejection({"input": "a", "output": "b\nOutput: c"}) == "format_echo"
    assert si.instance_rejection({"input": "", "output": "Fine."}) is None


def test_parsers():
    text = " Name a colour.\nTask 10: Count to five.\nTask 11: Write a"
    assert si.parse_instructions(text, truncated=True) == ["Name a colour.", "Count to five."]
    assert si.parse_instructions(" Name a colour.\n\nrambling", truncated=False) == ["Name a colour."]
    assert si.parse_instance(" happy\nOutput: sad\n\nTask: x", output_first=False) == {
        "input": "happy",
        "output": "sad",
    }
    assert si.parse_instance(" Positive\nInput: Great!", output_first=True) == {
        "input": "Great!",
        "output": "Positive",
    }
    assert si.parse_instance(" 42", output_first=False) == {"input": "", "output": "42"}
    assert si.parse_instance(" 42", output_first=False, truncated=True) is None
    assert si.parse_instance(" Positive", output_first=True) is None


def test_prompts(seeds):
    p = si.instruction_prompt(["A.", "B."])
    assert p.endswith("Task 1: A.\nTask 2: B.\nTask 3:")
    demos = si.instance_demos(seeds)
    assert all(d["is_classification"] for d in demos[True]) and not demos[False][1]["instances"][0]["input"]
    assert si.instance_prompt({"instruction": "X"}, demos[True], output_first=True).endswith(
        "Task: X\nClass label:"
    )
    clf = si.classification_prompt(si.clf_demos(seeds), "X")
    assert clf.count("Is it classification? Yes") == 4 and clf.endswith("Task: X\nIs it classification?")


def test_yes_probability_cache_matches_full_prompt(tiny):
    import torch

    model, tok = tiny
    prefix, queries = "Task: add\nIs it? Yes\n\n", ["Task: sort the list\nIs it?", "Task: x\nIs it?"]
    cached = si.yes_probability(model, tok, prefix, queries)
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in (" Yes", " No"))
    for q, p in zip(queries, cached, strict=True):
        ids = tok(prefix + q, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, -1, [yes, no]]
        assert p == pytest.approx(logits.softmax(-1)[0].item(), abs=1e-5)


def test_run_self_instruct_end_to_end_is_seeded(tiny, seeds):
    model, tok = tiny
    cfg = si.SelfInstructConfig(rounds=2, prompts_per_round=3, max_new_tokens=12)
    a = si.run_self_instruct(model, tok, seeds, cfg)
    b = si.run_self_instruct(model, tok, seeds, cfg)
    assert a.generated == b.generated and a.tasks == b.tasks
    assert sum(a.reasons().values()) == len(a.generated)
    assert all(t["rejected"] is None and t["instances"] for t in a.tasks)


def test_config_validation():
    with pytest.raises(ValueError, match=r"rouge_threshold must be in \(0, 1\], got 7"):
        si.SelfInstructConfig(rouge_threshold=7)


def test_seed_tasks_load_and_malformed_file_rejected(seeds, tmp_path):
    assert len(seeds) == 48 and sum(s["is_classification"] for s in seeds) == 16
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(
        '{"id": "t", "name": "n", "instruction": "i", "instances": [], "is_classification": "yes"}\n'
    )
    with pytest.raises(DataFormatError, match=r"seeds.jsonl:1: field 'is_classification' should be bool"):
        load_jsonl(bad, si.SEED_TASK_FIELDS)


def test_fit_clf_threshold_balances_the_classes():
    p = [0.1, 0.2, 0.3, 0.35, 0.6]
    y = [False, False, True, True, False]
    assert si.fit_clf_threshold(p, y) == pytest.approx(0.25)  # catches both positives, keeps 2 of 3 negatives
    assert si.fit_clf_threshold([0.4], [True]) == 0.5
