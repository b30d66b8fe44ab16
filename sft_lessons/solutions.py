"""Reference solutions for the executable exercises (kept out of the notebooks; see exercises.py)."""

from __future__ import annotations

# ---- chapter 01: prompt learning ----
# (chapter 01 solutions go here)


# ---- chapter 02: in-context learning ----
# (chapter 02 solutions go here)


# ---- chapter 03: LoRA math ----
# (chapter 03 solutions go here)


# ---- chapter 04: LoRA variants ----
# (chapter 04 solutions go here)


# ---- chapter 05: context extension ----
# (chapter 05 solutions go here)


# ---- chapter 06: instruction data ----
# (chapter 06 solutions go here)


# ---- chapter 07: DeepSpeed-Chat SFT ----
# (chapter 07 solutions go here)
