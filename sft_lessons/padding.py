"""Padding and batching for SFT: cut batches to their longest row, group records of similar length, measure both.

DeepSpeed-Chat pads every record to `max_seq_len`; most of that compute is spent on padding tokens. Because the loss
is masked (labels -100 on padding), dynamic padding gives the same loss for less work; `compare_padding` measures it.
"""

from __future__ import annotations

import time

from .dschat import build_sft_example, get_raw_dataset

PADDING_SCHEMES = ("max_length", "longest", "longest_grouped")


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
        import numpy as np

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


def compare_padding(
    tokenizer, max_seq_len: int = 256, quick: bool = False, model=None, batch_size: int = 8,
    n_batches: int | None = None, seed: int = 0,
) -> dict:  # fmt: skip
    """Padding fraction and training tokens/s of three batchings of chapter 7's SFT records, same loss.

    max_length: DeepSpeed-Chat's rows padded to max_seq_len; longest: each batch cut to its longest row
    (`trim_padding`); longest_grouped: the same, with batches of similar length (`LengthGroupedBatches`).
    Timed: forward + backward (fp32, dropout off) of `model` (default: a tiny random Llama for `tokenizer`)
    on the same `n_batches * batch_size` seeded records per scheme, interleaved, after one warm-up batch.
    """
    import numpy as np
    import torch

    n_batches = n_batches or (4 if quick else 2)
    if batch_size < 1 or n_batches < 1:
        raise ValueError(f"batch_size={batch_size}, n_batches={n_batches}; valid: >= 1 each")
    if model is None:
        from .models import tiny_causal_lm

        model = tiny_causal_lm("llama", seed=seed, vocab_size=len(tokenizer))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's embeddings")
    records = get_raw_dataset("local/hh_sft").get_train_data()
    eot = [tokenizer.eos_token_id]
    built = (build_sft_example(tokenizer, r["prompt"], r["chosen"], max_seq_len, eot) for r in records)
    examples = [e for e in built if e is not None]
    need = batch_size * n_batches
    if len(examples) < need:
        raise ValueError(f"max_seq_len={max_seq_len} keeps {len(examples)} of {len(records)} records; "
                         f"batch_size * n_batches = {need} needed")  # fmt: skip
    lengths = [int(e["attention_mask"].sum()) for e in examples]
    order = np.random.RandomState(seed).permutation(len(examples)).tolist()

    def chunks(idx):
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    def grouped(idx):  # LengthGroupedBatches over the records idx, mapped back to their indices
        sampler = LengthGroupedBatches([lengths[i] for i in idx], batch_size, seed)
        return [[idx[j] for j in b] for b in sampler]

    def padding_fraction(batches, scheme):  # pad tokens / all tokens the model runs on
        def width(b):
            return max_seq_len if scheme == "max_length" else max(lengths[i] for i in b)

        return 1 - sum(lengths[i] for b in batches for i in b) / sum(len(b) * width(b) for b in batches)

    epoch = {"max_length": chunks(order), "longest": chunks(order), "longest_grouped": grouped(order)}
    subset = order[:need]  # the timed records: the same for every scheme
    timed = {"max_length": chunks(subset), "longest": chunks(subset), "longest_grouped": grouped(subset)}
    device = next(model.parameters()).device
    keys = ("input_ids", "attention_mask", "labels")

    def batch(idx, scheme):
        b = {k: torch.stack([examples[i][k] for i in idx]) for k in keys}
        b = b if scheme == "max_length" else trim_padding(b)  # DeepSpeed-Chat keeps the padding columns
        return {k: v.to(device) for k, v in b.items()}

    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads, was_training = [p.grad for p in params], model.training
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(b) -> float:
        loss = model(**b, use_cache=False).loss
        loss.backward()
        for p in params:
            p.grad = None
        return loss.item()

    seconds = dict.fromkeys(PADDING_SCHEMES, 0.0)
    losses = {s: [] for s in PADDING_SCHEMES}  # (mean loss, number of target tokens) per batch
    model.eval()  # dropout off: the schemes must give the same loss
    try:
        step(batch(timed["longest"][0], "longest"))  # warm-up
        for i in range(n_batches):  # interleaved, so drifting machine load hits every scheme alike
            for scheme in PADDING_SCHEMES:
                b = batch(timed[scheme][i], scheme)
                sync()
                start = time.perf_counter()
                loss = step(b)
                sync()
                seconds[scheme] += time.perf_counter() - start
                losses[scheme].append((loss, int((b["labels"][:, 1:] != -100).sum())))
    finally:
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
        model.train(was_training)
    # same batches: same mean loss per batch; regrouped batches: same token-weighted mean over all batches
    diffs = [abs(a - b) for (a, _), (b, _) in zip(losses["max_length"], losses["longest"], strict=True)]
    mean = {s: sum(v * n for v, n in losses[s]) / sum(n for _, n in losses[s]) for s in PADDING_SCHEMES}
    diffs.append(abs(mean["longest_grouped"] - mean["max_length"]))
    if max(diffs) > 1e-4:
        raise AssertionError(f"the masked loss depends on the padding: largest difference {max(diffs):.2e}")
    real = sum(lengths[i] for i in subset)
    out = {"max_seq_len": max_seq_len, "batch_size": batch_size, "n_batches": n_batches,
           "records": len(examples), "dropped": len(records) - len(examples)}  # fmt: skip
    for scheme in PADDING_SCHEMES:
        out[scheme] = {
            "padding_fraction": padding_fraction(timed[scheme], scheme),
            "epoch_padding_fraction": padding_fraction(epoch[scheme], scheme),
            "seconds": seconds[scheme],
            "tokens_per_s": real / seconds[scheme],
        }
    best = max(("longest", "longest_grouped"), key=lambda s: out[s]["tokens_per_s"])
    out.update(loss_equal=True, max_loss_diff=max(diffs), faster=best,
               speedup=out[best]["tokens_per_s"] / out["max_length"]["tokens_per_s"])  # fmt: skip
    return out
