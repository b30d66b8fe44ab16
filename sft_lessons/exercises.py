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
# (chapter 01 exercises go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 exercises go here)


# ---- chapter 03: LoRA math ----
# (chapter 03 exercises go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 exercises go here)


# ---- chapter 05: context extension ----
# (chapter 05 exercises go here)


# ---- chapter 06: instruction data ----
# (chapter 06 exercises go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
STUB_07_1 = """
def sft_labels(input_ids, attention_mask, prompt_length):
    \"\"\"(T,) labels: input_ids with the prompt and the padding set to -100.\"\"\"
    labels = input_ids.clone()
    # TODO: mask the first prompt_length positions
    # TODO: mask the padding, found by the attention mask (not by token id: pad = eos here)
    return labels
"""


@exercise("07.1", "build the label mask for one record", STUB_07_1)
def check_sft_labels(fn) -> str:
    """Prompt and padding masked to -100, answer and its end marker kept, even when pad = eos."""
    import torch

    # prompt (3) | answer (3, ending in eos = 2) | padding with pad = eos = 2 (3)
    ids = torch.tensor([11, 12, 13, 21, 22, 2, 2, 2, 2])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0])
    expected = [-100, -100, -100, 21, 22, 2, -100, -100, -100]
    got = fn(ids.clone(), mask.clone(), 3)
    got_list = torch.as_tensor(got).tolist()
    if got_list[:3] != expected[:3]:
        raise ExerciseFailed(f"the prompt must be masked: expected {expected[:3]}, got {got_list[:3]}")
    if got_list[5] != 2:
        raise ExerciseFailed(
            f"the answer's final eos (id 2) must keep its label, got {got_list[5]}: "
            "masking by `input_ids == pad_token_id` hides it when pad = eos; use the attention mask"
        )
    expect_equal("labels", got_list, expected)
    if not torch.equal(fn(ids, mask, 3), torch.tensor(expected)) or ids[0] != 11:
        raise ExerciseFailed("return a new tensor and leave input_ids unchanged (clone before masking)")
    no_pad = fn(torch.tensor([5, 6, 7]), torch.tensor([1, 1, 1]), 1).tolist()
    expect_equal("labels without padding", no_pad, [-100, 6, 7])
    return "correct: prompt and padding masked by position, the end of the answer is still a target"


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
