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
    import torch

    from .quant import nf4_dequantize, nf4_quantize

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
    from peft import LoraConfig, get_peft_model

    from .models import tiny_causal_lm

    cases = [(["q_proj", "v_proj"], 4), (["gate_proj", "up_proj", "down_proj"], 8), (["k_proj"], 2)]
    for targets, r in cases:
        got = fn(tiny_causal_lm("llama"), targets, r)
        peft_model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=r, target_modules=targets))
        expected = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
        expect_equal(f"targets {targets}, r={r}", got, expected)
    return "correct: equals peft's count for three target sets"


# ---- chapter 05: context extension ----
# (chapter 05 exercises go here)


# ---- chapter 06: instruction data ----
# (chapter 06 exercises go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 exercises go here)
