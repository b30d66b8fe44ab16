"""Executable exercise checkers; each notebook runs its checker on the reference solution, so CI proves it works.

Conventions (shared by every chapter):
- An exercise is registered with `@exercise(key, title, stub)`; key is "CC.N" (chapter, number), e.g. "03.1".
- The decorated function is the checker: it takes the student's callable and raises ExerciseFailed with a helpful
  message (what was expected and what came back, with shapes) or returns a short success string.
- In the notebook, the exercise's code cell carries the cell tag `exercise` and the comment `# exercise CC.N`;
  it imports the reference from `sft_lessons.solutions` and calls `check("CC.N", fn)`. Practice copies replace the
  cell with the registered `stub`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from ..data import IGNORE_INDEX
from ..dschat import split_indices
from ..icl import build_icl_prompt
from ..lora import LinearLayer_LoRA
from ..models import tiny_causal_lm
from ..prompting import TEMPLATES, VERBALIZERS
from ..quant import nf4_dequantize, nf4_quantize
from ..rope import rope_frequencies
from ..self_instruct import rouge_l


class ExerciseFailed(AssertionError):
    """The student's answer is wrong; the message says what was expected and what came back."""


@dataclass(frozen=True)
class Exercise:
    """One executable exercise: its key ('03.1'), title, checker and the stub that practice copies show."""

    key: str
    title: str
    checker: Callable
    stub: str

    @property
    def chapter(self) -> str:
        return self.key.split(".")[0]


EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, title: str, stub: str):
    """Register the decorated checker under `key`."""

    def register(checker):
        if key in EXERCISES:
            raise ValueError(f"exercise {key!r} registered twice")
        EXERCISES[key] = Exercise(key, title, checker, stub.strip("\n"))
        return checker

    return register


def check(key: str, answer) -> str:
    """Run exercise `key`'s checker on `answer`; prints and returns the verdict, raises ExerciseFailed if wrong."""
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; known: {', '.join(sorted(EXERCISES))}")
    verdict = EXERCISES[key].checker(answer) or "correct"
    print(f"exercise {key} ({EXERCISES[key].title}): {verdict}")
    return verdict


def expect_close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise ExerciseFailed unless two tensors (or arrays) have the same shape and are allclose."""
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


# ---- chapter 01: prompt learning ----
_CALIBRATE_STUB = """
def calibrated_predictions(log_probs, content_free_log_probs):
    \"\"\"(n, L) label log-probs, (L,) content-free log-probs -> (n,) calibrated predictions.\"\"\"
    # TODO: renormalise both over the labels, divide by p_cf (W = diag(p_cf)^-1, b = 0), take the argmax
    ...
"""


@exercise("01.1", "contextual calibration (Zhao et al. 2021)", _CALIBRATE_STUB)
def check_calibrated_predictions(fn):
    log_probs = torch.log(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    cf = torch.log(torch.tensor([0.65, 0.35]))
    got = fn(log_probs, cf)
    expect_equal("shape of the predictions for a (3, 2) input", tuple(torch.as_tensor(got).shape), (3,))
    expect_equal("hand example (p_cf = [0.65, 0.35])", torch.as_tensor(got).tolist(), [0, 1, 1])
    unnormalised = log_probs + torch.tensor([[3.0], [-2.0], [0.5]])  # scores need not sum to 1
    expect_equal("unnormalised scores", torch.as_tensor(fn(unnormalised, cf - 4.0)).tolist(), [0, 1, 1])
    gen = torch.Generator().manual_seed(0)
    for n_labels in (2, 3, 5):
        scores = torch.randn(50, n_labels, generator=gen)
        cf = torch.randn(n_labels, generator=gen)
        expected = (scores.log_softmax(-1) - cf.log_softmax(-1)).argmax(-1)
        got = torch.as_tensor(fn(scores, cf))
        if not torch.equal(got.long(), expected):
            wrong = (got.long() != expected).nonzero().flatten()[:5].tolist()
            raise ExerciseFailed(
                f"{n_labels} labels: predictions differ at rows {wrong}; check the division by p_cf"
            )
    return "correct: calibration divides by p_cf, so a content-free input would be predicted uniformly"


_LABEL_SCORE_STUB = """
def label_scores(token_log_probs, aggregate="sum"):
    \"\"\"token_log_probs[label][word] = 1-D per-token log-probs -> (L,) label scores.\"\"\"
    # TODO: a word's score is the sum (or the mean) of its tokens; a label's score is the logsumexp over its words
    ...
"""


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
_BALANCED_STUB = """
def sample_balanced_demos(pool, k, seed=0):
    \"\"\"k (even) demonstrations from `pool` (a list of (text, label) pairs), k/2 per label, shuffled, seeded.\"\"\"
    # TODO: raise ValueError for odd k; draw k/2 of each label with random.Random(seed); shuffle the result
    ...
"""


def _toy_pool():
    return [(f"review {i}", i % 2) for i in range(40)]


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


_ICL_PROMPT_STUB = """
def my_icl_prompt(demos, query):
    \"\"\"'Review: {x}\\nSentiment: {word}\\n\\n' per demo (word ' negative'/' positive'), then 'Review: {query}\\nSentiment:'.\"\"\"
    # TODO: build the string by hand
    ...
"""


@exercise("02.2", "a k-shot prompt by hand", _ICL_PROMPT_STUB)
def check_my_icl_prompt(fn):
    template, verbalizer = TEMPLATES["review-sentiment"], VERBALIZERS["negative/positive"]
    pool = [("Loved it.", 1), ("A dull mess.", 0), ("Great cast, weak plot, still fun.", 1)]
    for k in (0, 1, 3):
        expected = build_icl_prompt(pool[:k], "Not bad at all.", template, verbalizer)
        expect_equal(f"prompt with k={k} demos", fn(pool[:k], "Not bad at all."), expected)
    return "correct: the same string as sft_lessons.icl.build_icl_prompt"


# ---- chapter 03: LoRA math ----
_LORA_FORWARD_STUB = '''
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    # TODO
    ...
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
    return "matches LinearLayer_LoRA (with and without bias, 2-D and 3-D inputs)"


_LORA_PARAMS_STUB = '''
def lora_num_params(d, k, r):
    """Trainable parameters of LoRA on one (d, k) weight at rank r."""
    # TODO
    ...
'''


@exercise("03.2", "count LoRA parameters", _LORA_PARAMS_STUB)
def check_lora_num_params(fn):
    """Compare fn with the shapes of A and B, including a non-square weight."""
    for d, k, r in [(576, 576, 8), (192, 576, 8), (1536, 576, 4), (576, 1536, 16), (11008, 4096, 64)]:
        layer = LinearLayer_LoRA(torch.empty(d, k), lora_dim=r)
        expected = layer.lora_right_weight.numel() + layer.lora_left_weight.numel()
        got = fn(d, k, r)
        if got == r * (d + d) and d != k:
            raise ExerciseFailed(
                f"lora_num_params({d}, {k}, {r}) = {got} counts A as r x d; A is r x k (k = {k})"
            )
        expect_equal(f"lora_num_params({d}, {k}, {r})", got, expected)
    return "r * (d + k) for square and non-square weights"


_MERGE_STUB = '''
def merge_lora(weight, lora_A, lora_B, scaling):
    """(d, k) merged weight W0 + scaling * B A; must not modify `weight`."""
    # TODO
    ...
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
    return "merged weight equals W0 + sBA and gives the unmerged layer's outputs"


# ---- chapter 04: LoRA variants ----
_NF4_STUB = """
def nf4_dequantize_answer(codes, absmax, levels, blocksize, shape):
    \"\"\"(n_padded,) uint8 codes, (n_blocks,) absmax, (16,) levels -> float32 tensor of `shape`.\"\"\"
    # TODO: look up each code in `levels`, scale each block of `blocksize` values by its absmax,
    #       drop the zero padding at the end, reshape to `shape`
    raise NotImplementedError
"""


@exercise("04.1", "implement NF4 dequantization", _NF4_STUB)
def check_nf4_dequantize(fn):
    """fn(codes, absmax, levels, blocksize, shape) must invert sft_lessons.quant.nf4_quantize."""
    torch.manual_seed(0)
    # whole blocks, a padded tail, tiny blocks
    for shape, blocksize in [((4, 64), 64), ((5, 30), 64), ((7,), 4)]:
        q = nf4_quantize(torch.randn(shape), blocksize=blocksize)
        got = fn(q.codes, q.absmax, q.levels, blocksize, shape)
        expect_close(f"shape {shape}, blocksize {blocksize}", got, nf4_dequantize(q), atol=1e-6)
    return "correct: matches nf4_dequantize on whole, padded and tiny blocks"


_LORA_COUNT_STUB = """
def lora_trainable_params(model, target_modules, r):
    \"\"\"LoRA parameters peft would add for nn.Linear modules whose name ends with one of target_modules.\"\"\"
    # TODO: for every torch.nn.Linear whose name ends with a target, add r * (in_features + out_features)
    raise NotImplementedError
"""


@exercise("04.2", "count LoRA parameters by hand", _LORA_COUNT_STUB)
def check_lora_trainable_params(fn):
    """fn(model, target_modules, r) must equal peft's trainable count on a tiny Llama."""
    cases = [(["q_proj", "v_proj"], 4), (["gate_proj", "up_proj", "down_proj"], 8), (["k_proj"], 2)]
    for targets, r in cases:
        got = fn(tiny_causal_lm("llama"), targets, r)
        peft_model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=r, target_modules=targets))
        expected = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
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


@exercise(
    "05.1",
    "linear position interpolation",
    """
def linear_pi_inv_freq(head_dim: int, theta: float, factor: float):
    \"\"\"(head_dim/2,) RoPE inverse frequencies after linear position interpolation by `factor`.\"\"\"
    # TODO: theta_i = theta ** (-2i / head_dim) for i = 0 .. head_dim/2 - 1, then squeeze positions by `factor`
    ...
""",
)
def check_linear_pi(fn):
    for head_dim, theta, factor in [(16, 10_000.0, 2.0), (64, 100_000.0, 4.0), (32, 500.0, 8.0)]:
        params = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
        expected = _hf_inv_freq(head_dim, params, 64)
        got = fn(head_dim, theta, factor)
        if got is None:
            raise ExerciseFailed(
                "linear_pi_inv_freq returned None; return a tensor of head_dim/2 frequencies"
            )
        expect_close(
            f"linear_pi_inv_freq({head_dim}, {theta}, {factor}) vs transformers rope_type='linear'",
            got,
            expected,
            atol=1e-7,
            rtol=1e-5,
        )
    return "matches transformers' rope_type='linear' for 3 configs"


@exercise(
    "05.2",
    "NTK-aware base (static NTK)",
    """
def ntk_scaled_theta(theta: float, factor: float, head_dim: int) -> float:
    \"\"\"The new RoPE base so that the slowest pair is interpolated by `factor` and the fastest is untouched.\"\"\"
    # TODO: raise the base theta; the exponent involves head_dim / (head_dim - 2)
    ...
""",
)
def check_ntk_theta(fn):
    for head_dim, theta, factor in [(64, 100_000.0, 4.0), (128, 10_000.0, 2.0), (32, 10_000.0, 8.0)]:
        new_theta = fn(theta, factor, head_dim)
        if not isinstance(new_theta, (int, float)):
            raise ExerciseFailed(f"expected a float base, got {type(new_theta).__name__}")
        # transformers' dynamic NTK with factor 1 at seq_len = factor * max_pos uses exactly the static NTK base
        params = {"rope_type": "dynamic", "factor": 1.0, "rope_theta": theta}
        expected = _hf_inv_freq(head_dim, params, 64, seq_len=int(64 * factor))
        expect_close(
            f"frequencies with ntk_scaled_theta({theta}, {factor}, {head_dim}) = {new_theta:.1f}",
            rope_frequencies(head_dim, new_theta),
            expected,
            atol=1e-9,
            rtol=1e-4,
        )
    return "your base reproduces transformers' NTK frequencies for 3 configs"


@exercise(
    "05.3",
    "ALiBi slopes",
    """
def alibi_slopes(num_heads: int):
    \"\"\"(num_heads,) ALiBi slopes, a geometric sequence starting at 2 ** (-8 / num_heads) for powers of two.\"\"\"
    # TODO: powers of two first; for other head counts, interleave slopes of the next power of two
    ...
""",
)
def check_alibi_slopes(fn):
    for heads in (4, 8, 12):
        bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope * key position 1
        expect_close(f"alibi_slopes({heads}) vs BLOOM's build_alibi_tensor", fn(heads), bloom, atol=1e-7)
    return "matches BLOOM's ALiBi slopes for 4, 8 and 12 heads"


# ---- chapter 06: instruction data ----
_ROUGE_L_STUB = '''
def rouge_l(candidate, reference):
    """ROUGE-L F1 of two strings: tokens = lowercase words split on non-alphanumerics; LCS-based P, R, F1."""
    # TODO: tokenise both, find the longest common subsequence length, then F1 = 2PR / (P + R) (0.0 if no overlap)
    ...
'''

# (candidate, reference, F1) worked out by hand; see the comments for the LCS.
ROUGE_L_CASES = [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat": P = R = 5/6
    ("Write a poem about the sea.", "Write a short poem about autumn.", 4 / 6),  # "write a poem about"
    ("a b", "a b c d", 2 / 3),  # P = 2/2, R = 2/4 -> 2 * 1 * 0.5 / 1.5
    ("A B C", "c b a", 1 / 3),  # a subsequence keeps order: LCS has length 1
    ("Hello, World!", "hello world", 1.0),  # case and punctuation do not count
    ("", "anything at all", 0.0),
    ("List three fruits.", "Name two rivers.", 0.0),
]


@exercise("06.1", "ROUGE-L, the Self-Instruct similarity filter", _ROUGE_L_STUB)
def check_rouge_l(fn):
    """Compare fn with hand-computed ROUGE-L F1 values, then with the package on the seed instructions."""
    for cand, ref, expected in ROUGE_L_CASES:
        got = fn(cand, ref)
        if got is None:
            raise ExerciseFailed("rouge_l returned None; return a float in [0, 1]")
        if abs(got - expected) > 1e-6:
            hint = " (that is the LCS length; divide to get P and R)" if got >= 1 and expected < 1 else ""
            raise ExerciseFailed(f"rouge_l({cand!r}, {ref!r}): expected {expected:.4f}, got {got!r}{hint}")
    pairs = [
        (
            "Give the opposite of the word provided.",
            "Give two advantages and two disadvantages of the option.",
        ),
        ("Check whether the integer is prime.", "Tell whether the number is even or odd."),
    ]
    for cand, ref in pairs:
        if abs(fn(cand, ref) - rouge_l(cand, ref)) > 1e-6:
            raise ExerciseFailed(
                f"rouge_l({cand!r}, {ref!r}): expected {rouge_l(cand, ref):.4f}, got {fn(cand, ref)}"
            )
    return f"{len(ROUGE_L_CASES) + len(pairs)} cases match, including empty and reordered inputs"


_SFT_LABELS_STUB = '''
def sft_labels(input_ids, prompt_len, attention_mask):
    """list[int] labels: -100 on the first prompt_len tokens and on padding (attention_mask 0), else the token id."""
    # TODO
    ...
'''


@exercise("06.2", "the SFT loss mask", _SFT_LABELS_STUB)
def check_sft_labels(fn):
    """Prompt and padding must be -100; the answer and its end-of-turn token (same id as padding!) must stay."""
    eos = pad = 2  # SmolLM2: pad = eos = <|im_end|>
    ids = [1, 9, 9, 2, 1, 7, 5, 5, eos, pad, pad]  # prompt (6 tokens) | answer 5 5 + end of turn | padding
    mask = [1] * 9 + [0, 0]
    expected = [IGNORE_INDEX] * 6 + [5, 5, eos] + [IGNORE_INDEX, IGNORE_INDEX]
    got = fn(ids, 6, mask)
    if got is None:
        raise ExerciseFailed("sft_labels returned None; return a list of ints")
    got = [int(x) for x in got]
    if len(got) != len(ids):
        raise ExerciseFailed(f"expected {len(ids)} labels (one per token), got {len(got)}")
    if got[8] == IGNORE_INDEX and got[6:8] == [5, 5]:
        raise ExerciseFailed(
            f"the answer's end-of-turn token (id {eos}) was masked: it has the pad id, so find padding with "
            f"attention_mask, not by token id, or the model never learns to stop. Got {got}"
        )
    expect_equal(f"sft_labels({ids}, prompt_len=6, attention_mask={mask})", got, expected)
    expect_equal("sft_labels with no padding and prompt_len=0", list(fn([4, 5], 0, [1, 1])), [4, 5])
    return "prompt and padding masked with IGNORE_INDEX; the answer and its end-of-turn token kept"


# ---- chapter 07: DeepSpeed-Chat SFT ----
STUB_07_1 = """
def split_indices(size, data_split, train_phase, seed):
    \"\"\"Indices of phase train_phase's share of `size` records: a seeded shuffle cut at the cumulative shares.\"\"\"
    # TODO: parse "2,4,4" into shares that sum to 1
    # TODO: shuffle range(size) with np.random.RandomState(seed).permutation
    # TODO: cut at round(size * cumulative share) and return phase train_phase's slice as a list
    return []
"""


@exercise("07.1", "data_split: each training phase gets its own seeded share", STUB_07_1)
def check_split_indices(fn) -> str:
    """Same indices as DeepSpeed-Chat-style splitting in sft_lessons.dschat; phases disjoint and complete."""
    for size, split, seed in ((10, "2,4,4", 0), (97, "10,0,0", 1), (33, "1,1,1", 42), (5, "6,2,2", 7)):
        phases = []
        for phase in (1, 2, 3):
            got = [int(i) for i in fn(size, split, phase, seed)]
            expect_equal(f"split_indices({size}, {split!r}, train_phase={phase}, seed={seed})",
                         got, split_indices(size, split, phase, seed))
            phases.append(got)
        every = sorted(i for part in phases for i in part)
        if every != list(range(size)):
            raise ExerciseFailed(f"the three phases of {size} records must cover each record once, got {every}")
    return "correct: seeded, reproducible shares; the three phases are disjoint and cover every record"


STUB_07_2 = """
def first_stop(ids, stop_sequences):
    \"\"\"Index where the earliest of the stop sequences starts in the list `ids`, or None.\"\"\"
    # TODO: a marker such as OPT's <|endoftext|> is several tokens: match whole sequences
    return None
"""


@exercise("07.2", "find where a multi-token end marker starts", STUB_07_2)
def check_first_stop(fn) -> str:
    """Earliest start over all sequences; whole-sequence matches only; None if absent."""
    cases = [
        (([5, 6, 7, 8, 7, 8], [[7, 8], [9]]), 2),
        (([5, 6, 0, 7, 8], [[7, 8], [0]]), 2),
        (([7, 5, 7, 8], [[7, 8]]), 2),
        (([5, 6, 7], [[7, 8]]), None),
        (([], [[1]]), None),
    ]
    for (ids, stops), expected in cases:
        expect_equal(f"first_stop({ids}, {stops})", fn(list(ids), stops), expected)
    return "correct"
