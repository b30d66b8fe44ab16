"""Padding and batching for SFT: trim batches, group by length (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb).

DeepSpeed-Chat pads every record to `max_seq_len`; most of that compute is spent on padding tokens. Because the loss
is masked (labels -100 on padding), dynamic padding gives the same loss for less work; `sft-lessons bench` measures it.
"""

from __future__ import annotations

import numpy as np


def trim_padding(batch: dict) -> dict:
    """Cut right-padded (B, T) tensors to the longest real row: no compute is spent on all-padding columns."""
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in batch.items()}


class LengthGroupedBatches:
    """Batches of similar-length records: a seeded shuffle, sorted by length within windows of 16 batches."""

    def __init__(self, lengths, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.lengths, self.batch_size, self.seed, self.rank, self.world = (
            list(lengths),
            batch_size,
            seed,
            rank,
            world,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = np.random.RandomState(self.seed + self.epoch)
        order, window = rng.permutation(len(self.lengths)).tolist(), 16 * self.batch_size
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))][self.rank :: self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
