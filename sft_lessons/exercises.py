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
_LORA_FORWARD_STUB = '''
def lora_forward(x, weight, bias, lora_A, lora_B, scaling):
    """(..., k) -> (..., d): W0 x + bias + scaling * B A x; weight (d, k), lora_A (r, k), lora_B (d, r)."""
    # TODO
    ...
'''


@exercise("03.1", "the LoRA forward pass", _LORA_FORWARD_STUB)
def check_lora_forward(fn):
    """Compare fn with LinearLayer_LoRA on random factors, with and without bias, on 2-D and 3-D inputs."""
    import torch

    from .lora import LinearLayer_LoRA

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
    import torch

    from .lora import LinearLayer_LoRA

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
    import torch

    from .lora import LinearLayer_LoRA

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
# (chapter 04 exercises go here)


# ---- chapter 05: context extension ----
# (chapter 05 exercises go here)


# ---- chapter 06: instruction data ----
# (chapter 06 exercises go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 exercises go here)
