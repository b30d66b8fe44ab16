"""Padding and batching for SFT: trim batches, group by length (第 7 章, notebooks/07_deepspeed_chat_sft.ipynb).

DeepSpeed-Chat pads every record to `max_seq_len`; most of that compute is spent on padding tokens. Because the loss
is masked (labels -100 on padding), dynamic padding gives the same loss for less work; `sft-lessons bench` measures it.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import IGNORE_INDEX


def trim_padding(batch: dict) -> dict:
    """Cut right-padded (B, T) tensors to the longest real row: no compute is spent on all-padding columns."""
    width = int(batch["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in batch.items()}


def flatten_batch(batch: dict) -> dict:
    """Padding-free: a right-padded (B, T) batch as one (1, N) row of its real tokens, N = the batch's non-padding
    tokens. position_ids restart at 0 for each record and there is no attention_mask, so transformers' causal mask
    becomes block-diagonal (records do not see each other; the model must run with use_cache=False). Each record's
    first label is -100: no record is trained to predict the next one's first token."""
    rows = batch["attention_mask"].sum(dim=1).tolist()
    ids, labels, positions = [], [], []
    for row, n in enumerate(rows):
        ids.append(batch["input_ids"][row, :n])
        labels.append(batch["labels"][row, :n].clone())
        labels[-1][0] = IGNORE_INDEX
        positions.append(torch.arange(n, device=batch["input_ids"].device))
    return {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None],
            "position_ids": torch.cat(positions)[None]}  # fmt: skip


def records_kept_apart(model) -> bool:
    """Whether this model's attention keeps flattened records apart: the second of two short random records must get
    (nearly) the logits it gets alone, far nearer than when it sees the first (any dtype: the gap is relative)."""
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    first, second = (torch.randint(0, vocab, (1, n), generator=g).to(device) for n in (5, 3))
    row = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(3)])[None].to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second, use_cache=False).logits[0].float()
            flat = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, 5:].float()
            mixed = model(input_ids=row, use_cache=False).logits[0, 5:].float()  # sees the first record
    finally:
        model.train(was_training)
    return bool((flat - alone).abs().max() <= 0.1 * (mixed - alone).abs().max())


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
