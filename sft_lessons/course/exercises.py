"""Executable exercise checkers; each notebook runs its checker on the reference solution, so CI proves it.

Conventions (shared by every chapter):
- An exercise is registered with `@exercise(key, title, stub)`; key is "CC.N" (chapter, number), e.g. "03.1".
- The stub defines one function: a docstring, a short TODO comment and `raise NotImplementedError`. Its name
  is the name of the reference solution in `sft_lessons.course.solutions` (`Exercise.solution`); where the
  package has a function for the same job, the solution has its name and argument order, and the checker
  compares the two on random inputs.
- The decorated function is the checker: it takes the student's callable and raises ExerciseFailed with a
  helpful message (what was expected and what came back, with shapes) or returns a short success string.
- An exercise asks for a variation of what its chapter shows, never for code the chapter has already printed.
- In the notebook, the exercise's code cell carries the cell tag `exercise` and the comment `# exercise CC.N`;
  it imports the reference from `sft_lessons.course.solutions` and calls `check("CC.N", fn)`. Practice copies
  replace the cell with the registered `stub`.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from ..data import IGNORE_INDEX
from ..dschat import split_indices
from ..icl import build_icl_prompt
from ..lora import LinearLayer_LoRA
from ..memory import count_parameters
from ..models import tiny_causal_lm
from ..prompting import TEMPLATES, VERBALIZERS, PromptTemplate, Verbalizer, contextual_calibration
from ..quant import double_dequantize, double_quantize, nf4_dequantize, nf4_quantize
from ..rope import alibi_slopes, linear_pi_frequencies, ntk_theta, rope_frequencies, wavelengths
from ..self_instruct import lcs_length
from ..sft_eval import first_stop


class ExerciseFailed(AssertionError):
    """The student's answer is wrong; the message says what was expected and what came back."""


@dataclass(frozen=True)
class Exercise:
    """One executable exercise: key ('03.1'), title, checker, practice-copy stub, solution's name."""

    key: str
    title: str
    checker: Callable
    stub: str
    solution: str

    @property
    def chapter(self) -> str:
        return self.key.split(".")[0]


EXERCISES: dict[str, Exercise] = {}
_STUB_FUNCTION = re.compile(r"^def\s+(\w+)\s*\(", re.M)


def exercise(key: str, title: str, stub: str):
    """Register the decorated checker under `key`; the stub's function names the reference solution."""
    match = _STUB_FUNCTION.search(stub)
    if match is None:
        raise ValueError(f"exercise {key!r}: the stub must define the function to write")

    def register(checker):
        if key in EXERCISES:
            raise ValueError(f"exercise {key!r} registered twice")
        EXERCISES[key] = Exercise(key, title, checker, stub.strip("\n"), match.group(1))
        return checker

    return register


def check(key: str, answer) -> str:
    """Run exercise `key`'s checker on `answer`: print and return the verdict, or raise ExerciseFailed."""
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; known: {', '.join(sorted(EXERCISES))}")
    verdict = EXERCISES[key].checker(answer) or "correct"
    print(f"exercise {key} ({EXERCISES[key].title}): {verdict}")
    return verdict


def expect_close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise ExerciseFailed unless two tensors (or arrays) have the same shape and are allclose."""
    if got is None:
        raise ExerciseFailed(f"{name}: got None; return a value")
    got_t, exp_t = torch.as_tensor(got), torch.as_tensor(expected)
    if got_t.shape != exp_t.shape:
        raise ExerciseFailed(f"{name}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}")
    if not torch.allclose(got_t.double(), exp_t.double(), atol=atol, rtol=rtol):
        diff = (got_t.double() - exp_t.double()).abs().max().item()
        raise ExerciseFailed(
            f"{name}: values differ (max abs diff {diff:.3g}); expected {exp_t}, got {got_t}"
        )


def expect_equal(name: str, got, expected) -> None:
    """Raise ExerciseFailed unless got == expected."""
    if got != expected:
        raise ExerciseFailed(f"{name}: expected {expected!r}, got {got!r}")


def as_number(name: str, value) -> float:
    """`value` as a Python float (a float, an int or a one-element tensor); ExerciseFailed otherwise."""
    if value is None:
        raise ExerciseFailed(f"{name} returned None; return a number")
    try:
        return float(torch.as_tensor(value, dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError):
        raise ExerciseFailed(f"{name}: expected one number, got {value!r}") from None


def as_int_list(name: str, value) -> list[int]:
    """`value` (a list, an array or a 1-D tensor) as a list of Python ints; ExerciseFailed otherwise."""
    if value is None:
        raise ExerciseFailed(f"{name} returned None; return a list of ints")
    try:
        return [int(v) for v in torch.as_tensor(value).reshape(-1).tolist()]
    except (TypeError, ValueError, RuntimeError):
        raise ExerciseFailed(f"{name}: expected a list of ints, got {value!r}") from None


# ---- chapter 01: prompt learning ----
_THRESHOLD_STUB = '''
def calibrated_threshold(content_free_log_probs):
    """(2,) content-free scores (negative, positive) -> t: after calibration, positive iff P(positive) > t."""
    # TODO: renormalise over the two labels; solve p1 / p_cf1 > p0 / p_cf0 (with p0 = 1 - p1) for p1
    raise NotImplementedError
'''


@exercise("01.1", "contextual calibration as a decision threshold", _THRESHOLD_STUB)
def check_calibrated_threshold(fn):
    """Thresholding P(positive) at fn(cf) must predict what contextual_calibration's argmax predicts."""
    hand = as_number("calibrated_threshold", fn(torch.log(torch.tensor([0.65, 0.35]))))
    if abs(hand - 0.35) > 1e-5:
        hint = {0.5: " (0.5 is the uncalibrated threshold)", 0.65: " (that is p_cf of the negative label)"}
        near = next((h for v, h in hint.items() if abs(hand - v) < 1e-5), "")
        raise ExerciseFailed(f"p_cf = [0.65, 0.35]: expected the threshold 0.35, got {hand:.4f}{near}")
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        # unnormalised label scores, as score_label_words returns them
        cf = torch.randn(2, generator=gen) * 2 - 3.0
        t = as_number("calibrated_threshold", fn(cf))
        scores = torch.randn(400, 2, generator=gen) * 2 - 1.0
        p_pos = scores.softmax(-1)[:, 1]
        clear = (p_pos - cf.softmax(-1)[1]).abs() > 1e-4  # leave out exact ties
        calibrated = contextual_calibration(scores, cf).argmax(-1)[clear]
        by_threshold = (p_pos > t).long()[clear]
        wrong = (calibrated != by_threshold).nonzero().flatten()
        if len(wrong):
            i = int(wrong[0])
            raise ExerciseFailed(
                f"content-free scores {cf.tolist()} (not normalised): threshold {t:.4f} disagrees with the "
                f"calibrated argmax on {len(wrong)} of {int(clear.sum())} inputs, e.g. P(positive) = "
                f"{p_pos[clear][i]:.4f} -> calibrated label {int(calibrated[i])}; renormalise over the labels"
            )
    return (
        "correct: with two labels, calibration moves the threshold on P(positive) from 0.5 to p_cf(positive)"
    )


_LABEL_SCORE_STUB = '''
def label_scores(token_log_probs, aggregate="sum"):
    """token_log_probs[label][word] = 1-D per-token log-probs -> (L,) label scores."""
    # TODO: a word scores the sum (or the mean) of its tokens; a label scores the logsumexp over its words
    raise NotImplementedError
'''


@exercise("01.2", "multi-token label words: sum vs mean", _LABEL_SCORE_STUB)
def check_label_scores(fn):
    t = torch.tensor
    lps = [
        [t([-1.0, -0.1])],
        [t([-0.8]), t([-3.0, -0.2, -0.1])],
    ]  # label 0: one 2-token word; label 1: two words
    for aggregate, expected in [
        ("sum", [-1.1, torch.logsumexp(t([-0.8, -3.3]), 0).item()]),
        ("mean", [-0.55, torch.logsumexp(t([-0.8, -1.1]), 0).item()]),
    ]:
        got = fn(lps, aggregate)
        expect_close(f"label_scores(..., {aggregate!r})", got, t(expected), atol=1e-5)
    return "correct: sum penalises long words, mean forgives them; logsumexp pools a label's words"


# ---- chapter 02: in-context learning ----
_BALANCED_STUB = '''
def sample_balanced_demos(pool, k, seed=0):
    """k (even) demos from `pool` (a list of (text, label) pairs), k/2 per label, shuffled, seeded."""
    # TODO: raise ValueError for odd k; draw k/2 of each label with random.Random(seed); shuffle the result
    raise NotImplementedError
'''


def _toy_pool():
    """40 (text, label) pairs, 22 negative and 18 positive, in a fixed random order (not alternating)."""
    labels = [0] * 22 + [1] * 18
    random.Random(3).shuffle(labels)  # starts 0, 0, 0, 0: a slice of the pool is not balanced
    return [(f"review {i}", label) for i, label in enumerate(labels)]


@exercise("02.1", "balanced demonstration sets", _BALANCED_STUB)
def check_sample_balanced_demos(fn):
    pool = _toy_pool()
    for k in (2, 4, 8):
        demos = [tuple(d) for d in fn(pool, k, seed=1)]
        expect_equal(f"number of demos for k={k}", len(demos), k)
        labels = [label for _, label in demos]
        expect_equal(
            f"label counts for k={k} (negative, positive)",
            (labels.count(0), labels.count(1)),
            (k // 2, k // 2),
        )
        expect_equal(f"duplicates for k={k}", len(set(demos)), k)
        if not set(demos) <= set(pool):
            raise ExerciseFailed(f"k={k}: demos {sorted(set(demos) - set(pool))[:3]} are not in the pool")
        expect_equal(
            f"the same seed gives the same demos (k={k})", [tuple(d) for d in fn(pool, k, seed=1)], demos
        )
    draws = {tuple(tuple(d) for d in fn(pool, 8, seed=s)) for s in range(5)}
    if len(draws) < 2:
        raise ExerciseFailed("5 different seeds gave the same demos; use the seed to draw")
    orders = {tuple(label for _, label in fn(pool, 8, seed=s)) for s in range(10)}
    if orders <= {(0,) * 4 + (1,) * 4, (1,) * 4 + (0,) * 4}:
        raise ExerciseFailed("the labels always come in two blocks; shuffle the demos (recency bias!)")
    try:
        fn(pool, 3, seed=0)
    except ValueError:
        pass
    else:
        raise ExerciseFailed("k=3 cannot be balanced over 2 labels: raise ValueError")
    return "correct: balanced, distinct, seeded and shuffled"


_ICL_PROMPT_STUB = '''
def build_icl_prompt(demos, query, template, verbalizer, sep="\\n\\n"):
    """Each demo filled into `template` with its label's first word, then `sep`; then the query up to [Z]."""
    # TODO: use template.fill(text, word) for the demos and template.split(query)[0] for the query;
    #       the label word of label y is verbalizer.label_words[y][0]
    raise NotImplementedError
'''

_CLOZE = PromptTemplate("[X] Overall, it was a [Z] movie.", "cloze")


@exercise("02.2", "a k-shot prompt for any template", _ICL_PROMPT_STUB)
def check_build_icl_prompt(fn):
    """Compare fn with sft_lessons.icl.build_icl_prompt: prefix and cloze templates, several separators."""
    pool = [("Loved it.", 1), ("A dull mess.", 0), ("Great cast, weak plot, still fun.", 1), ("Too long.", 0)]
    synonyms = Verbalizer({0: [" terrible", " awful"], 1: [" great", " superb"]}, name="terrible/great")
    cases = [
        (TEMPLATES["review-sentiment"], VERBALIZERS["negative/positive"], "\n\n", 3),
        (TEMPLATES["question-answer"], VERBALIZERS["bad/good"], "\n\n", 2),
        (TEMPLATES["overall-it-was"], synonyms, "\n", 4),
        (_CLOZE, VERBALIZERS["bad/good"], "\n\n", 2),
        (_CLOZE, synonyms, " | ", 3),
        (TEMPLATES["review-sentiment"], VERBALIZERS["bad/good"], "\n###\n", 0),
    ]
    query = "Not bad at all."
    for template, verbalizer, sep, k in cases:
        expected = build_icl_prompt(pool[:k], query, template, verbalizer, sep)
        got = fn(pool[:k], query, template, verbalizer, sep)
        if got != expected:
            raise ExerciseFailed(
                f"template {template.text!r} ({template.kind}), label words {verbalizer.first_words()}, "
                f"sep {sep!r}, k={k}:\nexpected {expected!r}\ngot      {got!r}"
            )
    return "correct: the same strings as sft_lessons.icl.build_icl_prompt, cloze templates included"


# ---- chapter 03: LoRA math ----
_LORA_FORWARD_STUB = '''
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    # TODO: the frozen path F.linear(x, weight, bias) plus the scaled low-rank path through A, then B
    raise NotImplementedError
'''


@exercise("03.1", "the LoRA forward pass", _LORA_FORWARD_STUB)
def check_lora_forward(fn):
    """Compare fn with LinearLayer_LoRA on random factors, with and without bias, on 2-D and 3-D inputs."""
    gen = torch.Generator().manual_seed(0)
    for bias, shape in [(True, (4, 12)), (False, (2, 3, 12))]:
        weight, b = torch.randn(10, 12, generator=gen), torch.randn(10, generator=gen) if bias else None
        layer = LinearLayer_LoRA(weight, lora_dim=3, lora_scaling=6, bias=b)
        torch.nn.init.normal_(
            layer.lora_left_weight, generator=gen
        )  # B != 0, or the LoRA path would not show
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            got = fn(x, layer.weight, b, layer.lora_A, layer.lora_B, layer.lora_scaling)
            expected = layer(x)
        if got is None:
            raise ExerciseFailed("lora_forward returned None; return the (..., d) output tensor")
        expect_close(f"lora_forward on x{tuple(shape)} (bias={bias}, r=3, scaling=2.0)", got, expected)
    return "correct: matches LinearLayer_LoRA (with and without bias, 2-D and 3-D inputs)"


_RSLORA_STUB = '''
def rslora_lora_scaling(r, lora_alpha):
    """The lora_scaling to give LinearLayer_LoRA(lora_dim=r) so that its s equals peft's rsLoRA scale."""
    # TODO: LinearLayer_LoRA: s = lora_scaling / lora_dim; LoraConfig(use_rslora=True): s = alpha / sqrt(r)
    raise NotImplementedError
'''


def _peft_rslora_scale(r: int, lora_alpha: float) -> float:
    """The scale peft itself sets for LoraConfig(r, lora_alpha, use_rslora=True) on a tiny Llama's q_proj."""
    config = LoraConfig(r=r, lora_alpha=lora_alpha, use_rslora=True, target_modules=["q_proj"])
    peft_model = get_peft_model(tiny_causal_lm("llama"), config)
    return peft_model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]


@exercise("03.2", "rsLoRA's scale in DeepSpeed-Chat's LoRA layer", _RSLORA_STUB)
def check_rslora_lora_scaling(fn):
    """LinearLayer_LoRA(lora_dim=r, lora_scaling=fn(r, alpha)) must scale like peft's use_rslora=True."""
    for r, alpha in [(1, 16), (4, 8), (16, 16), (64, 32)]:
        value = as_number(f"rslora_lora_scaling({r}, {alpha})", fn(r, alpha))
        s = LinearLayer_LoRA(torch.empty(8, 8), lora_dim=r, lora_scaling=value).lora_scaling
        peft_s = _peft_rslora_scale(r, alpha)
        if not math.isclose(s, peft_s, rel_tol=1e-6):
            hint = ""
            if math.isclose(value, alpha / math.sqrt(r), rel_tol=1e-6):
                hint = "; that is rsLoRA's s itself, but LinearLayer_LoRA divides lora_scaling by lora_dim"
            elif math.isclose(value, alpha, rel_tol=1e-6):
                hint = "; lora_scaling = alpha gives plain LoRA's s = alpha / r"
            raise ExerciseFailed(
                f"r={r}, lora_alpha={alpha}: lora_scaling={value:g} gives s = {s:.4f}, peft's rsLoRA s = "
                f"{peft_s:.4f}{hint}"
            )
    return "correct: the same s as peft's use_rslora=True at r = 1, 4, 16, 64 (and the same parameter count)"


_MERGE_STUB = '''
def merge_lora(weight, lora_A, lora_B, scaling):
    """(d, k) merged weight W0 + scaling * B A; must not modify `weight`."""
    # TODO: return a new tensor; an in-place update would change the caller's W0
    raise NotImplementedError
'''


@exercise("03.3", "merge LoRA into the base weight", _MERGE_STUB)
def check_merge_lora(fn):
    """Compare fn with LinearLayer_LoRA.fuse_lora_weight and check that the input weight is left alone."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(9, 7, generator=gen)
    layer = LinearLayer_LoRA(weight.clone(), lora_dim=2, lora_scaling=4)
    torch.nn.init.normal_(layer.lora_left_weight, generator=gen)
    original = weight.clone()
    with torch.no_grad():
        got = fn(weight, layer.lora_A, layer.lora_B, layer.lora_scaling)
        expected = layer.fuse_lora_weight().weight
    if not torch.equal(weight, original):
        raise ExerciseFailed("merge_lora modified its `weight` argument in place; return a new tensor")
    expect_close("merge_lora(W0 (9, 7), A (2, 7), B (9, 2), scaling=2.0)", got, expected)
    x = torch.randn(5, 7, generator=gen)
    layer.unfuse_lora_weight()
    with torch.no_grad():
        expect_close("x @ merged.T vs the unmerged LoRA layer", x @ torch.as_tensor(got).T, layer(x))
    return "correct: the merged weight equals W0 + sBA and gives the unmerged layer's outputs"


# ---- chapter 04: LoRA variants ----
_DQ_STUB = '''
def double_dequantize(state):
    """(n_blocks,) float32 absmax constants from a DoubleQuantState (int8 codes, per-block scales, offset)."""
    # TODO: split state.codes into blocks of state.dq_blocksize (zero-pad the last one); code c of block b
    #       stands for c / 127 * state.scales[b]; drop the padding; add back state.offset (the mean)
    raise NotImplementedError
'''


@exercise("04.1", "undo double quantization", _DQ_STUB)
def check_double_dequantize(fn):
    """fn(state) must equal sft_lessons.quant.double_dequantize for whole, padded and tiny blocks."""
    gen = torch.Generator().manual_seed(0)
    for n_blocks, dq_blocksize in [(5184, 256), (300, 256), (10, 4), (7, 4)]:
        absmax = torch.rand(n_blocks, generator=gen) * 2 + 0.5  # positive, like real absmax values
        state = double_quantize(absmax, dq_blocksize)
        got = fn(state)
        expected = double_dequantize(state)
        name = f"{n_blocks} absmax values, dq_blocksize {dq_blocksize}"
        if got is not None and torch.as_tensor(got).numel() > n_blocks:
            raise ExerciseFailed(f"{name}: got {torch.as_tensor(got).numel()} values; drop the padding")
        if got is not None and torch.as_tensor(got).shape == expected.shape:
            shift = (torch.as_tensor(got).double() - expected.double()).mean().item()
            if abs(shift + state.offset) < 1e-4 and abs(state.offset) > 1e-3:
                raise ExerciseFailed(
                    f"{name}: every value is off by -{state.offset:.4f}; add back state.offset"
                )
        expect_close(name, got, expected, atol=1e-6)
    q = nf4_quantize(torch.randn(6, 100, generator=gen), blocksize=16, double_quant=True)
    absmax = torch.as_tensor(fn(q.double))
    weights = (
        (q.levels[q.codes.long()].view(-1, q.blocksize) * absmax.unsqueeze(1)).reshape(-1)[:600].view(6, 100)
    )
    expect_close("NF4 + DQ weights rebuilt with your absmax", weights, nf4_dequantize(q), atol=1e-6)
    return "correct: matches double_dequantize; NF4 + DQ weights come back as nf4_dequantize gives them"


_LORA_COUNT_STUB = '''
def lora_trainable_params(model, target_modules, r):
    """LoRA parameters peft would add for nn.Linear modules whose name ends with one of target_modules."""
    # TODO: for every torch.nn.Linear whose name ends with a target, add r * (in_features + out_features)
    raise NotImplementedError
'''


@exercise("04.2", "count LoRA parameters by hand", _LORA_COUNT_STUB)
def check_lora_trainable_params(fn):
    """fn(model, target_modules, r) must equal peft's trainable count on a tiny Llama."""
    cases = [(["q_proj", "v_proj"], 4), (["gate_proj", "up_proj", "down_proj"], 8), (["k_proj"], 2)]
    for targets, r in cases:
        got = fn(tiny_causal_lm("llama"), targets, r)
        peft_model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=r, target_modules=targets))
        expected = count_parameters(peft_model)
        expect_equal(f"targets {targets}, r={r}", got, expected)
    return "correct: equals peft's count for three target sets"


# ---- chapter 05: context extension ----
def _hf_inv_freq(head_dim, rope_parameters, max_position_embeddings, seq_len=None):
    """transformers' inv_freq for a one-head Llama config with these rope parameters."""
    config = LlamaConfig(
        hidden_size=head_dim,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=dict(rope_parameters),
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, None, seq_len=seq_len)
    return inv_freq


_LINEAR_PI_STUB = '''
def linear_pi_frequencies(head_dim, theta, factor):
    """(head_dim/2,) RoPE inverse frequencies after linear position interpolation by `factor`."""
    # TODO: theta_i = theta ** (-2i / head_dim), i = 0 .. head_dim/2 - 1, then squeeze positions by `factor`
    raise NotImplementedError
'''


@exercise("05.1", "linear position interpolation", _LINEAR_PI_STUB)
def check_linear_pi(fn):
    """Compare fn with transformers' rope_type='linear', then with sft_lessons.rope on random configs."""
    for head_dim, theta, factor in [(16, 10_000.0, 2.0), (64, 100_000.0, 4.0), (32, 500.0, 8.0)]:
        params = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
        expect_close(
            f"linear_pi_frequencies({head_dim}, {theta}, {factor}) vs transformers rope_type='linear'",
            fn(head_dim, theta, factor),
            _hf_inv_freq(head_dim, params, 64),
            atol=1e-7,
            rtol=1e-5,
        )
    rng = random.Random(5)
    for _ in range(5):
        head_dim, theta, factor = 2 * rng.randint(2, 64), 10 ** rng.uniform(2, 6), rng.uniform(1.0, 16.0)
        expect_close(
            f"linear_pi_frequencies({head_dim}, {theta:.1f}, {factor:.3f})",
            fn(head_dim, theta, factor),
            linear_pi_frequencies(head_dim, theta, factor),
            atol=1e-7,
            rtol=1e-5,
        )
    return "correct: matches transformers' rope_type='linear' and sft_lessons.rope on 8 configs"


_NTK_FACTOR_STUB = '''
def ntk_factor(theta, new_theta, head_dim):
    """The factor s for which NTK-aware scaling turns base `theta` into `new_theta` (head_dim-dim heads)."""
    # TODO: invert new_theta = theta * s ** (head_dim / (head_dim - 2))
    raise NotImplementedError
'''


@exercise("05.2", "the NTK factor behind a larger RoPE base", _NTK_FACTOR_STUB)
def check_ntk_factor(fn):
    """In sft_lessons.rope.ntk_theta, fn's factor must give new_theta; the slowest wavelength grows by it."""
    for theta, new_theta, head_dim in [
        (10_000.0, 100_000.0, 64),
        (10_000.0, 500_000.0, 128),
        (500.0, 1e4, 32),
    ]:
        s = as_number(f"ntk_factor({theta}, {new_theta}, {head_dim})", fn(theta, new_theta, head_dim))
        if not s > 0:
            raise ExerciseFailed(
                f"ntk_factor({theta}, {new_theta}, {head_dim}) = {s}: a factor must be positive"
            )
        back = ntk_theta(theta, s, head_dim)
        if not math.isclose(back, new_theta, rel_tol=1e-6):
            hint = (
                " (that is the ratio of the bases; the exponent is missing)"
                if math.isclose(s, new_theta / theta, rel_tol=1e-6)
                else ""
            )
            raise ExerciseFailed(
                f"ntk_factor({theta}, {new_theta}, {head_dim}) = {s:.4f}, but ntk_theta({theta}, {s:.4f}, "
                f"{head_dim}) = {back:,.1f}, not {new_theta:,.1f}{hint}"
            )
        slowest = (
            wavelengths(rope_frequencies(head_dim, new_theta))[-1]
            / wavelengths(rope_frequencies(head_dim, theta))[-1]
        )
        expect_close(
            f"slowest wavelength ratio for base {theta:g} -> {new_theta:g}", s, slowest.item(), rtol=1e-4
        )
    return (
        "correct: your factor reproduces the new base, and the slowest pair slows down by exactly that factor"
    )


_ALIBI_STUB = '''
def alibi_slopes(num_heads):
    """(num_heads,) ALiBi slopes, a geometric sequence starting at 2 ** (-8 / num_heads) for powers of two."""
    # TODO: powers of two first; for other head counts, interleave slopes of the next power of two
    raise NotImplementedError
'''


@exercise("05.3", "ALiBi slopes", _ALIBI_STUB)
def check_alibi_slopes(fn):
    """Compare fn with BLOOM's build_alibi_tensor, then with sft_lessons.rope.alibi_slopes for more heads."""
    for heads in (4, 8, 12):
        bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope * key position 1
        expect_close(f"alibi_slopes({heads}) vs BLOOM's build_alibi_tensor", fn(heads), bloom, atol=1e-7)
    for heads in (1, 2, 3, 5, 6, 7, 16, 20, 24, 40):
        expect_close(f"alibi_slopes({heads})", fn(heads), alibi_slopes(heads), atol=1e-7)
    return "correct: matches BLOOM's ALiBi slopes and sft_lessons.rope for 13 head counts"


# ---- chapter 06: instruction data ----
# Word-level ROUGE-L by hand: (candidate, reference, F1); chapter 6 section 2.1 prints the first four.
ROUGE_L_CASES = [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat": P = R = 5/6
    ("Write a poem about the sea.", "Write a short poem about autumn.", 4 / 6),  # "write a poem about"
    ("a b", "a b c d", 2 / 3),  # P = 2/2, R = 2/4 -> 2 * 1 * 0.5 / 1.5
    ("A B C", "c b a", 1 / 3),  # a subsequence keeps order: LCS has length 1
    ("Hello, World!", "hello world", 1.0),  # case and punctuation do not count
    ("", "anything at all", 0.0),
    ("List three fruits.", "Name two rivers.", 0.0),
]

_ROUGE_CHARS_STUB = '''
def rouge_l_chars(candidate, reference):
    """ROUGE-L F1 over characters: lowercase, keep letters and digits (str.isalnum: 汉字 too), LCS P, R, F1."""
    # TODO: tokens = the kept characters; LCS length by dynamic programming; F1 = 2PR / (P + R), or 0.0
    raise NotImplementedError
'''

# Character-level ROUGE-L by hand: (candidate, reference, F1).
ROUGE_L_CHAR_CASES = [
    ("写一首关于秋天的诗。", "写一首关于大海的诗", 7 / 9),  # LCS 写一首关于的诗; "。" is not a token
    ("把这句话翻译成英文", "把这段话翻译成法文。", 7 / 9),  # LCS 把这话翻译成文
    ("列出三种水果", "说出两条河流", 1 / 6),  # only 出 in common
    ("abc", "acb", 2 / 3),  # English letters are characters too; order counts
    ("Hello, World!", "hello world", 1.0),  # case, spaces and punctuation do not count
    ("", "任何内容", 0.0),
    ("猫", "狗", 0.0),
]


def _rouge_l_chars_reference(candidate: str, reference: str) -> float:
    """The checker's own character ROUGE-L, built on sft_lessons.self_instruct.lcs_length."""
    c, r = ([ch for ch in text.lower() if ch.isalnum()] for text in (candidate, reference))
    lcs = lcs_length(c, r)
    return 0.0 if lcs == 0 else 2 * lcs / (len(c) + len(r))


@exercise("06.1", "ROUGE-L over characters, for Chinese instructions", _ROUGE_CHARS_STUB)
def check_rouge_l_chars(fn):
    """Hand-computed Chinese and English cases, then random mixed strings against lcs_length on characters."""
    for cand, ref, expected in ROUGE_L_CHAR_CASES:
        got = as_number(f"rouge_l_chars({cand!r}, {ref!r})", fn(cand, ref))
        if abs(got - expected) > 1e-6:
            hint = ""
            if got == 0.0 and expected > 0:
                hint = " (a word tokeniser drops 汉字; split into characters)"
            elif got >= 1 and expected < 1:
                hint = " (that is the LCS length; divide to get P and R)"
            raise ExerciseFailed(
                f"rouge_l_chars({cand!r}, {ref!r}): expected {expected:.4f}, got {got:.4f}{hint}"
            )
    rng = random.Random(0)
    alphabet = "写诗秋天大海翻译文把这话的一首关于 ，。？abcAB1 !"
    for _ in range(40):
        cand = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        ref = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        expected = _rouge_l_chars_reference(cand, ref)
        got = as_number(f"rouge_l_chars({cand!r}, {ref!r})", fn(cand, ref))
        if abs(got - expected) > 1e-6:
            raise ExerciseFailed(f"rouge_l_chars({cand!r}, {ref!r}): expected {expected:.4f}, got {got:.4f}")
    return f"correct: {len(ROUGE_L_CHAR_CASES)} hand cases and 40 random mixed strings match"


_MULTI_TURN_STUB = '''
def multi_turn_labels(input_ids, attention_mask, assistant_header, end_of_turn):
    """list[int]: the token id inside every assistant turn (its <|im_end|> too), else IGNORE_INDEX (-100)."""
    # TODO: a turn starts after each occurrence of the token sequence `assistant_header` and ends with the
    #       next `end_of_turn` token (kept: the model must learn to stop); system and user turns, the headers,
    #       the newline after <|im_end|> and padding (attention_mask 0; its id is end_of_turn!) are ignored
    raise NotImplementedError
'''

# A hand-made ChatML dialogue in small ids: 1 <|im_start|>, 2 <|im_end|> (= pad), 3 system, 4 user,
# 5 assistant, 9 newline, 10+ words. System turn, user, assistant, user, assistant; then two padding tokens.
_HAND_DIALOGUE = (
    [1, 3, 9, 10, 2, 9]  # system
    + [1, 4, 9, 11, 12, 2, 9]  # user
    + [1, 5, 9, 21, 22, 2, 9]  # assistant: 21 22 <|im_end|> learnt
    + [1, 4, 9, 13, 2, 9]  # user
    + [1, 5, 9, 23, 2, 9]  # assistant: 23 <|im_end|> learnt
)
_HAND_LABELS = [IGNORE_INDEX] * 16 + [21, 22, 2] + [IGNORE_INDEX] * 10 + [23, 2] + [IGNORE_INDEX] * 3


@functools.lru_cache(maxsize=1)
def _chat_tokenizer():
    from ..models import tiny_tokenizer

    # a local byte-level BPE with SmolLM2's ChatML special tokens: 1 <|im_start|>, 2 <|im_end|> (= pad)
    return tiny_tokenizer()


def _random_dialogue(rng: random.Random) -> list[dict]:
    """A seeded multi-turn conversation: maybe a system turn, then 1-3 user/assistant exchanges."""
    words = "the movie was great and the plot terrible I loved music what is capital of France Paris".split()

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 8))).capitalize() + rng.choice(".?!")

    messages = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        messages += [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}]
    return messages


def _label_mismatch(ids, got, expected, end_of_turn, tokens=None) -> str:
    """A description of the first position where the labels differ, with a hint for the usual mistakes."""
    i = next(j for j, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
    shown = f"token {tokens[i]!r}" if tokens else f"token id {ids[i]}"
    hint = ""
    if expected[i] == ids[i] == end_of_turn and got[i] == IGNORE_INDEX:
        hint = ": the end-of-turn token was masked; it has the pad id, but the model must learn to stop"
    elif expected[i] == IGNORE_INDEX and got[i] != IGNORE_INDEX:
        hint = ": only assistant turns are targets (not the system or user turns, the headers or the padding)"
    elif expected[i] != IGNORE_INDEX:
        hint = ": every assistant turn is a target, not only the first or the last one"
    return f"position {i} ({shown}): expected label {expected[i]}, got {got[i]}{hint}"


@exercise("06.2", "the loss mask of a multi-turn dialogue", _MULTI_TURN_STUB)
def check_multi_turn_labels(fn):
    """A hand-made dialogue, then random ChatML dialogues against sft_lessons.record_formats.sft_example."""
    from ..record_formats import sft_example

    ids, mask = _HAND_DIALOGUE + [2, 2], [1] * len(_HAND_DIALOGUE) + [0, 0]
    got = as_int_list("multi_turn_labels", fn(list(ids), list(mask), [1, 5, 9], 2))
    expect_equal("number of labels (one per token)", len(got), len(ids))
    if got != _HAND_LABELS:
        raise ExerciseFailed(
            "hand dialogue (1 <|im_start|>, 2 <|im_end|> = pad, 3 system, 4 user, 5 assistant, 9 newline) "
            f"{ids}: " + _label_mismatch(ids, got, _HAND_LABELS, 2)
        )
    tokenizer = _chat_tokenizer()
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(0)
    for n in range(12):
        example = sft_example(tokenizer, _random_dialogue(rng))
        pad = rng.randint(0, 5)
        ids = example["input_ids"] + [tokenizer.pad_token_id] * pad
        mask = [1] * len(example["input_ids"]) + [0] * pad
        expected = example["labels"] + [IGNORE_INDEX] * pad
        got = as_int_list("multi_turn_labels", fn(list(ids), list(mask), list(header), end))
        expect_equal(f"random dialogue {n}: number of labels", len(got), len(ids))
        if got != expected:
            tokens = tokenizer.convert_ids_to_tokens(ids)
            where = _label_mismatch(ids, got, expected, end, tokens)
            raise ExerciseFailed(f"random dialogue {n} ({example['text']!r}): {where}")
    return "correct: every assistant turn and its <|im_end|> learnt; system, user, headers and padding masked"


# ---- chapter 07: DeepSpeed-Chat SFT ----
_PHASE_SIZES_STUB = '''
def phase_sizes(size, data_split):
    """[n1, n2, n3]: how many of `size` records phases 1, 2 and 3 get from data_split such as "2,4,4"."""
    # TODO: three non-negative numbers with a positive sum, else ValueError; normalise them to shares;
    #       round each share on its own with round() (halves go to the even number), then move every cut back
    #       by the excess so that the sizes add up to `size`, keeping each cut within 0..size, as split_indices does
    raise NotImplementedError
'''


@exercise("07.1", "how many records each training phase gets", _PHASE_SIZES_STUB)
def check_phase_sizes(fn) -> str:
    """Compare fn with the sizes of sft_lessons.dschat.split_indices' shares; bad splits raise ValueError."""
    cases = [(10, "1,1,1"), (10, "2,4,4"), (97, "10,0,0"), (5, "6,2,2"), (7, "1,1,1"), (280, "2,4,4"),
             (5, "1,1,0"), (1, "1,1,0"), (3, "0,1,1")]  # ties (round half to even); a cut clamped at 0
    rng = random.Random(1)
    for _ in range(20):
        parts = [rng.randint(0, 9) for _ in range(3)]
        parts[rng.randrange(3)] += 1  # a positive sum
        cases.append((rng.randint(1, 500), ",".join(map(str, parts))))
    cases += [(33, "0.5,0.3,0.2"), (1, "1,1,1"), (0, "2,4,4")]
    for size, split in cases:
        expected = [len(split_indices(size, split, phase, 0)) for phase in (1, 2, 3)]
        got = fn(size, split)
        got = as_int_list(f"phase_sizes({size}, {split!r})", got)
        if got != expected:
            hint = f" (they add up to {sum(got)}; move the cuts back by the rounding excess)" if sum(got) != size else ""
            raise ExerciseFailed(f"phase_sizes({size}, {split!r}): expected {expected}, got {got}{hint}")
    for bad in ("2,4", "0,0,0", "1,-1,2", "a,b,c", "1,2,3,4"):
        try:
            fn(10, bad)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as err:  # any other error is the wrong kind of refusal
            raise ExerciseFailed(
                f"phase_sizes(10, {bad!r}) raised {type(err).__name__}: {err}; raise ValueError"
            ) from err
        raise ExerciseFailed(f"phase_sizes(10, {bad!r}) should raise ValueError (as the sft command does)")
    return "correct: the same sizes as split_indices, always adding up to the whole; bad splits rejected"


STUB_07_2 = '''
def first_stop(ids, stop_sequences):
    """Index where the earliest of the stop sequences starts in the list `ids`, or None."""
    # TODO: a marker such as OPT's <|endoftext|> is several tokens: match whole sequences
    raise NotImplementedError
'''


@exercise("07.2", "find where a multi-token end marker starts", STUB_07_2)
def check_first_stop(fn) -> str:
    """Earliest start over all sequences, whole matches only, None if absent; random cases vs the package."""
    cases = [
        (([5, 6, 7, 8, 7, 8], [[7, 8], [9]]), 2),
        (([5, 6, 0, 7, 8], [[7, 8], [0]]), 2),
        (([7, 5, 7, 8], [[7, 8]]), 2),
        (([5, 6, 7], [[7, 8]]), None),
        (([], [[1]]), None),
    ]
    for (ids, stops), expected in cases:
        expect_equal(f"first_stop({ids}, {stops})", fn(list(ids), stops), expected)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, 4, int(rng.integers(0, 12))).tolist()
        stops = [rng.integers(0, 4, int(rng.integers(1, 4))).tolist() for _ in range(int(rng.integers(1, 4)))]
        expect_equal(
            f"first_stop({ids}, {stops})", fn(list(ids), [list(s) for s in stops]), first_stop(ids, stops)
        )
    return "correct: matches sft_lessons.sft_eval's stop search on 205 cases"
