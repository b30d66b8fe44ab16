import inspect
import math
import random
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F

import sft_lessons.course.solutions as solutions
from sft_lessons import self_instruct
from sft_lessons.course import exercises
from sft_lessons.course import notebooks as course
from sft_lessons.course.notebooks import select_notebooks
from sft_lessons.data import IGNORE_INDEX
from sft_lessons.paths import notebooks_dir
from sft_lessons.quant import double_dequantize


def test_registry_and_check(monkeypatch):
    monkeypatch.setattr(exercises, "EXERCISES", {})

    @exercises.exercise("99.1", "add one", "def add_one(x):\n    # TODO\n    raise NotImplementedError")
    def check_add_one(fn):
        exercises.expect_equal("add_one(1)", fn(1), 2)

    assert exercises.check("99.1", lambda x: x + 1) == "correct"
    with pytest.raises(exercises.ExerciseFailed, match="expected 2, got 1"):
        exercises.check("99.1", lambda x: x)
    assert exercises.EXERCISES["99.1"].chapter == "99"
    assert exercises.EXERCISES["99.1"].solution == "add_one"  # the stub's function names the solution
    with pytest.raises(KeyError, match="99.1"):
        exercises.check("99.2", None)
    with pytest.raises(ValueError, match="must define"):
        exercises.exercise("99.3", "no function", "# TODO")


def test_expect_close_reports_shapes():
    with pytest.raises(exercises.ExerciseFailed, match=r"expected shape \(2,\), got \(3,\)"):
        exercises.expect_close("v", [1.0, 2.0, 3.0], [1.0, 2.0])
    exercises.expect_close("v", [1.0, 2.0], [1.0, 2.0 + 1e-7])


# ---- plausible wrong answers, at least one per exercise: each must be rejected with ExerciseFailed ----


def _icl_draft(demos, query, template, verbalizer, sep="\n\n"):
    """Chapter 2's on-screen draft: right for the review-sentiment template only."""
    words = {0: " negative", 1: " positive"}
    shots = "".join(f"Review: {x}\nSentiment:{words[y]}\n\n" for x, y in demos)
    return shots + f"Review: {query}\nSentiment:"


def _icl_whole_template_query(demos, query, template, verbalizer, sep="\n\n"):  # keeps a cloze suffix
    shots = "".join(template.fill(x, verbalizer.label_words[y][0]) + sep for x, y in demos)
    return shots + template.fill(query)


def _icl_demos_cut_at_z(demos, query, template, verbalizer, sep="\n\n"):  # drops a cloze suffix from demos
    shots = "".join(template.split(x)[0] + verbalizer.label_words[y][0] + sep for x, y in demos)
    return shots + template.split(query)[0]


def _icl_ignores_sep(demos, query, template, verbalizer, sep="\n\n"):
    return solutions.build_icl_prompt(demos, query, template, verbalizer, "\n\n")


def _balanced_in_blocks(pool, k, seed=0):  # balanced and seeded, but never shuffled
    if k % 2:
        raise ValueError("odd k")
    rng = random.Random(seed)
    return [d for label in (0, 1) for d in rng.sample([d for d in pool if d[1] == label], k // 2)]


def _dq_single_scale(state):  # the first block's scale for every block
    return state.codes.float() / 127 * state.scales[0] + state.offset


def _dq_untrimmed(state):  # keeps the zero padding of the last block
    pad = (-state.codes.numel()) % state.dq_blocksize
    blocks = F.pad(state.codes.float(), (0, pad)).view(-1, state.dq_blocksize)
    return (blocks / 127 * state.scales.unsqueeze(1)).reshape(-1) + state.offset


def _lora_count_square(model, target_modules, r):  # the seed's d*r + r*d: right for square weights only
    return sum(
        2 * r * m.in_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in target_modules
    )


def _lora_count_first_layer(model, target_modules, r):  # stops after decoder layer 0
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in target_modules and ".0." in name
    )


def _char_rouge(c, r, score):
    c, r = ([ch for ch in t.lower() if ch.isalnum()] for t in (c, r))
    return score(self_instruct.lcs_length(c, r), len(c), len(r))


def _rouge_with_spaces_and_punctuation(candidate, reference):  # every character is a token
    c, r = list(candidate.lower()), list(reference.lower())
    lcs = self_instruct.lcs_length(c, r)
    return 0.0 if lcs == 0 else 2 * lcs / (len(c) + len(r))


def _labels_mask_end_by_id(input_ids, attention_mask, assistant_header, end_of_turn):  # pad = eos trap
    labels = solutions.multi_turn_labels(input_ids, attention_mask, assistant_header, end_of_turn)
    return [IGNORE_INDEX if t == end_of_turn else label for t, label in zip(input_ids, labels, strict=True)]


def _header_starts(ids, header):
    return [i for i in range(len(ids) - len(header) + 1) if list(ids[i : i + len(header)]) == list(header)]


def _labels_single_turn(input_ids, attention_mask, assistant_header, end_of_turn):
    """Chapter 7's single-turn mask: the prompt ends at the first assistant header, the rest is learnt."""
    start = _header_starts(input_ids, assistant_header)[0] + len(assistant_header)
    pairs = enumerate(zip(input_ids, attention_mask, strict=True))
    return [t if i >= start and m else IGNORE_INDEX for i, (t, m) in pairs]


def _labels_last_turn_only(input_ids, attention_mask, assistant_header, end_of_turn):  # only the last answer
    labels = solutions.multi_turn_labels(input_ids, attention_mask, assistant_header, end_of_turn)
    start = _header_starts(input_ids, assistant_header)[-1]
    return [IGNORE_INDEX if i < start else label for i, label in enumerate(labels)]


def _labels_with_header(input_ids, attention_mask, assistant_header, end_of_turn):  # learns the header too
    labels = solutions.multi_turn_labels(input_ids, attention_mask, assistant_header, end_of_turn)
    for s in _header_starts(input_ids, assistant_header):
        labels[s : s + len(assistant_header)] = input_ids[s : s + len(assistant_header)]
    return labels


def _phase_sizes_per_share(size, data_split):  # rounds each share on its own: may not add up to size
    parts = [float(x) for x in data_split.split(",")]
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ValueError(data_split)
    return [int(round(size * x / sum(parts))) for x in parts]


def _phase_sizes_floor(size, data_split):  # int() instead of round() at the cumulative cuts
    parts = [float(x) for x in data_split.split(",")]
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ValueError(data_split)
    bounds = [0] + [int(size * sum(parts[: i + 1]) / sum(parts)) for i in range(3)]
    return [bounds[i + 1] - bounds[i] for i in range(3)]


def _phase_sizes_unchecked(size, data_split):  # never refuses a split
    parts = ([abs(float(x)) for x in data_split.split(",")] + [0.0, 0.0, 0.0])[:3]
    total = sum(parts) or 1.0
    bounds = [0] + [int(round(size * sum(parts[: i + 1]) / total)) for i in range(3)]
    return [bounds[i + 1] - bounds[i] for i in range(3)]


def _first_stop_in_list_order(ids, stop_sequences):  # the first sequence that matches, not the earliest start
    for seq in stop_sequences:
        for i in range(len(ids) - len(seq) + 1):
            if ids[i : i + len(seq)] == list(seq):
                return i
    return None


def _first_stop_first_token(ids, stop_sequences):  # matches the first token of a marker only
    starts = [i for seq in stop_sequences for i, t in enumerate(ids) if t == seq[0]]
    return min(starts, default=None)


def _first_stop_end(ids, stop_sequences):  # where the marker ends, not where it starts
    start = solutions.first_stop(ids, stop_sequences)
    return None if start is None else start + 1


WRONG_ANSWERS = {
    "01.1": [
        lambda cf: 0.5,  # no calibration at all
        lambda cf: float(torch.as_tensor(cf).softmax(-1)[0]),  # p_cf of the negative label
        lambda cf: float(torch.as_tensor(cf)[1].exp()),  # not renormalised over the two labels
    ],
    "01.2": [
        lambda lps, aggregate="sum": solutions.label_scores(lps, "mean"),  # the mean where the sum is wanted
        lambda lps, aggregate="sum": torch.stack(  # max over a label's words instead of logsumexp
            [torch.stack([lp.sum() if aggregate == "sum" else lp.mean() for lp in ws]).max() for ws in lps]
        ),
    ],
    "02.1": [
        lambda pool, k, seed=0: pool[:k],  # ignores the labels
        lambda pool, k, seed=0: random.Random(seed).sample(pool, k),  # random, not balanced
        _balanced_in_blocks,
    ],
    "02.2": [_icl_draft, _icl_whole_template_query, _icl_demos_cut_at_z, _icl_ignores_sep],
    "03.1": [
        lambda x, w, b, a, bb, s: x @ w.t(),  # forgot the LoRA path and the bias
        lambda x, w, b, a, bb, s: F.linear(x, w, b) + F.linear(F.linear(x, a), bb),  # no scaling
        lambda x, w, b, a, bb, s: F.linear(x, w) + s * F.linear(F.linear(x, a), bb),  # no bias
    ],
    "03.2": [
        lambda r, alpha: alpha / math.sqrt(r),  # rsLoRA's s itself, divided by r once more
        lambda r, alpha: alpha,  # plain LoRA
        lambda r, alpha: alpha * r,  # s = alpha
    ],
    "03.3": [
        lambda w, a, b, s: w.add_(s * b @ a),  # in place
        lambda w, a, b, s: w.T + s * (a.T @ b.T),  # the transposed matrix
        lambda w, a, b, s: w + b @ a,  # no scaling
    ],
    "04.1": [
        lambda state: double_dequantize(state) - state.offset,  # forgot the mean
        lambda state: double_dequantize(state) * 127 / 128,  # int8 read as c / 128
        _dq_single_scale,
        _dq_untrimmed,
    ],
    "04.2": [_lora_count_square, _lora_count_first_layer],
    "05.1": [
        lambda d, theta, s: solutions.linear_pi_frequencies(d, theta, 1.0) * s,  # stretched, not squeezed
        lambda d, theta, s: solutions.linear_pi_frequencies(d, theta, 1.0),  # forgot the factor
        lambda d, theta, s: theta ** (-torch.arange(0, d // 2) / d) / s,  # exponent i/d instead of 2i/d
    ],
    "05.2": [
        lambda theta, new, d: new / theta,  # the ratio of the bases
        lambda theta, new, d: (new / theta) ** (d / (d - 2)),  # the forward exponent
    ],
    "05.3": [
        lambda n: torch.tensor([2 ** (-8 * (k + 1) / n) for k in range(n)]),  # powers-of-two rule for every n
        lambda n: torch.tensor([2 ** (-8 * k / n) for k in range(n)]),  # off by one: starts at 1
    ],
    "06.1": [
        self_instruct.rouge_l,  # word tokens: every 汉字 is dropped
        _rouge_with_spaces_and_punctuation,
        lambda c, r: float(_char_rouge(c, r, lambda lcs, m, n: lcs)),  # the LCS length
        lambda c, r: _char_rouge(c, r, lambda lcs, m, n: lcs / m if m else 0.0),  # precision only
    ],
    "06.2": [_labels_mask_end_by_id, _labels_single_turn, _labels_last_turn_only, _labels_with_header],
    "07.1": [_phase_sizes_per_share, _phase_sizes_floor, _phase_sizes_unchecked],
    "07.2": [_first_stop_in_list_order, _first_stop_first_token, _first_stop_end],
}


def test_every_exercise_has_wrong_answers():
    assert set(WRONG_ANSWERS) == set(exercises.EXERCISES), "each checker needs wrong answers to reject"
    assert all(WRONG_ANSWERS.values())


@pytest.mark.parametrize("key", sorted(exercises.EXERCISES))
def test_solution_passes_stub_raises_and_wrong_answers_fail(key):
    ex = exercises.EXERCISES[key]
    solution = getattr(solutions, ex.solution)
    assert exercises.check(key, solution).startswith("correct")
    namespace = {}
    exec(ex.stub, namespace)
    stub = namespace[ex.solution]
    assert inspect.signature(stub) == inspect.signature(solution), "stub and solution differ in arguments"
    with pytest.raises(NotImplementedError):
        exercises.check(key, stub)
    assert key in WRONG_ANSWERS, f"exercise {key}: add plausible wrong answers to WRONG_ANSWERS"
    for wrong in WRONG_ANSWERS[key]:
        with pytest.raises(exercises.ExerciseFailed):
            exercises.check(key, wrong)


@pytest.mark.parametrize("key", sorted(exercises.EXERCISES))
def test_stub_convention(key):
    ex = exercises.EXERCISES[key]
    lines = [line.strip() for line in ex.stub.splitlines()]
    assert lines[0].startswith(f"def {ex.solution}("), "the stub defines the function the solution names"
    assert lines[1].startswith('"""') and lines[1].endswith('"""') and len(lines[1]) > 6, "one-line docstring"
    assert lines[2].startswith("# TODO"), "a short TODO comment above the body"
    assert lines[-1] == "raise NotImplementedError", "every stub's body raises NotImplementedError"
    assert "..." not in lines and "pass" not in lines


def test_every_registered_exercise_has_a_reference_solution():
    for ex in exercises.EXERCISES.values():
        assert callable(getattr(solutions, ex.solution, None)), f"{ex.key}: no solutions.{ex.solution}"
    assert len({ex.solution for ex in exercises.EXERCISES.values()}) == len(exercises.EXERCISES)


@pytest.mark.parametrize("path", select_notebooks([], notebooks_dir()), ids=lambda p: p.stem)
def test_exercise_cells_name_a_registered_key_and_import_its_solution(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or not re.search(r"#\s*exercise\s", cell.source):
            continue
        match = course.EXERCISE_KEY.search(cell.source)
        assert match, f"{path.name}: malformed exercise comment in {cell.source[:60]!r}"
        key = match.group(1)
        assert key in exercises.EXERCISES, f"{path.name}: # exercise {key} has no registered checker"
        assert key.startswith(path.name[:2] + "."), f"{path.name}: exercise {key} belongs to another chapter"
        assert course.EXERCISE_TAG in cell.metadata.get("tags", []), f"{path.name}: {key} cell lacks the tag"
        name = exercises.EXERCISES[key].solution
        assert re.search(rf"^from sft_lessons\.course\.solutions import {name}\b", cell.source, re.M), (
            f"{path.name}: exercise {key} must import solutions.{name}"
        )
        assert f'check("{key}", {name})' in cell.source, f"{path.name}: exercise {key} must check {name}"
