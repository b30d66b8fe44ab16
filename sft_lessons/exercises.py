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
    import torch

    got_t, exp_t = torch.as_tensor(got), torch.as_tensor(expected)
    if got_t.shape != exp_t.shape:
        raise ExerciseFailed(f"{name}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}")
    if not torch.allclose(got_t.double(), exp_t.double(), atol=atol, rtol=rtol):
        diff = (got_t.double() - exp_t.double()).abs().max().item()
        raise ExerciseFailed(f"{name}: values differ (max abs diff {diff:.3g}); expected {exp_t}, got {got_t}")


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
    import torch

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
    import torch

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
    from .icl import build_icl_prompt
    from .prompting import TEMPLATES, VERBALIZERS

    template, verbalizer = TEMPLATES["review-sentiment"], VERBALIZERS["negative/positive"]
    pool = [("Loved it.", 1), ("A dull mess.", 0), ("Great cast, weak plot, still fun.", 1)]
    for k in (0, 1, 3):
        expected = build_icl_prompt(pool[:k], "Not bad at all.", template, verbalizer)
        expect_equal(f"prompt with k={k} demos", fn(pool[:k], "Not bad at all."), expected)
    return "correct: the same string as sft_lessons.icl.build_icl_prompt"


# ---- chapter 03: LoRA math ----
# (chapter 03 exercises go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 exercises go here)


# ---- chapter 05: context extension ----
# (chapter 05 exercises go here)


# ---- chapter 06: instruction data ----
# (chapter 06 exercises go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 exercises go here)
