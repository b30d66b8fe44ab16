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
def sft_labels(input_ids, attention_mask, prompt_length):
    """(T,) labels: input_ids with the prompt and the padding set to -100."""
    labels = input_ids.clone()
    labels[:prompt_length] = -100
    labels[attention_mask == 0] = -100  # by position: pad = eos must stay a target where it is real
    return labels


def first_stop(ids, stop_sequences):
    """Index where the earliest of the stop sequences starts in the list `ids`, or None."""
    starts = [
        i
        for seq in stop_sequences
        for i in range(len(ids) - len(seq) + 1)
        if ids[i : i + len(seq)] == list(seq)
    ]
    return min(starts, default=None)
