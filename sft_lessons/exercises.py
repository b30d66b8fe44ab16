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
def _hf_inv_freq(head_dim, rope_parameters, max_position_embeddings, seq_len=None):
    """transformers' inv_freq for a one-head Llama config with these rope parameters."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

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
    from .rope import rope_frequencies

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
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for heads in (4, 8, 12):
        bloom = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope * key position 1
        expect_close(f"alibi_slopes({heads}) vs BLOOM's build_alibi_tensor", fn(heads), bloom, atol=1e-7)
    return "matches BLOOM's ALiBi slopes for 4, 8 and 12 heads"


# ---- chapter 06: instruction data ----
# (chapter 06 exercises go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 exercises go here)
