"""peft in practice: a fair Trainer run, AdaLoRA's Trainer callback, adapter sizes (第 4 章, notebooks/04_lora_variants.ipynb)."""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .memory import count_parameters, optimizer_state_bytes
from .timing import sync, timed_call


def saved_size_bytes(model) -> int:
    """Bytes on disk of model.save_pretrained(...): the adapter only for a PeftModel, everything otherwise."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()  # no 'Writing model shards' bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            return sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    finally:
        if not was_disabled:
            enable_progress_bars()


def adalora_callback(peft_model):
    """A TrainerCallback calling update_and_allocate(global_step) after optimizer.step() and before zero_grad()."""
    class AdaLoraCallback(TrainerCallback):
        """Trainer never calls AdaLoRA's budget update; on_optimizer_step runs while the gradients still exist."""

        def __init__(self, model):
            self.model = model
            self.history = []  # (global_step, scheduled total rank, singular values not zero) per step

        def on_optimizer_step(self, args, state, control, **kwargs):
            # state.global_step is the index of the step being finished (it is incremented after zero_grad).
            base = self.model.base_model
            base.update_and_allocate(state.global_step)
            budget, _ = base.rankallocator.budget_schedule(state.global_step)
            self.history.append((state.global_step, budget, sum(rank_allocation(self.model).values())))

    return AdaLoraCallback(peft_model)


_LAYER = re.compile(r"\.(\d+)\.")


def rank_allocation(peft_model) -> dict[str, int]:
    """{module name: current rank} for every AdaLoRA layer: the number of singular values not masked to zero."""
    ranks = {}
    for name, module in peft_model.named_modules():
        lora_e = getattr(module, "lora_E", None)
        if lora_e is None or not hasattr(lora_e, "keys"):
            continue
        for adapter in lora_e.keys():
            ranks[name] = int((lora_e[adapter] != 0).sum())
    return ranks


def rank_table(ranks: dict[str, int]):
    """Ranks as a (layer x module) pandas DataFrame, e.g. rows 0..5 and columns query, key, value, attn.out, ..."""
    rows = {}
    for name, rank in ranks.items():
        match = _LAYER.search(name)
        if match is None:
            raise ValueError(
                f"no layer index in module name {name!r}; rank_table expects '...layer.<i>...' names"
            )
        module = name[match.end() :]  # e.g. 'attention.self.query', 'output.dense', 'self_attn.q_proj'
        rows.setdefault(int(match.group(1)), {})[_SHORT.get(module, module.split(".")[-1])] = rank
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


# BERT reuses the name 'dense' for three different matrices in every layer
_SHORT = {"attention.output.dense": "attn.out", "intermediate.dense": "ffn.in", "output.dense": "ffn.out"}


def classification_dataset(tokenizer, reviews, max_length: int = 64):
    """The reviews DatasetDict tokenized for sequence classification (truncated to max_length, unpadded)."""
    data = reviews.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True, desc=None
    )
    keep = {"input_ids", "token_type_ids", "attention_mask", "label"}
    return data.remove_columns([c for c in data["train"].column_names if c not in keep])


def predict_labels(model, tokenizer, dataset, batch_size: int = 64):
    """Predicted class of every row of a tokenized dataset, in order -> np.ndarray (n,)."""
    collate = DataCollatorWithPadding(tokenizer)
    keep = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in dataset.column_names]
    rows = dataset.select_columns(keep)
    was_training = model.training
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            batch = {key: value.to(model.device) for key, value in batch.items()}
            predictions.append(model(**batch).logits.argmax(-1).cpu())  # (b,)
    model.train(was_training)
    return torch.cat(predictions).numpy()


def step_timer():
    """A TrainerCallback timing each training step (forward, backward, optimizer; not evaluation)."""
    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps = []  # seconds of each optimizer step
            self._start = None

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.steps.append(time.perf_counter() - self._start)

    return StepTimer()


def _accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def train_classifier(
    model,
    tokenizer,
    data,
    *,
    learning_rate: float,
    epochs: int = 3,
    batch_size: int = 16,
    seed: int = 0,
    output_dir: str | None = None,
    callbacks=(),
    eval_split: str = "test",
    optimizer=None,
):
    """Train on data['train'] with HF Trainer, scoring data[eval_split] each epoch -> (trainer, result dict).

    optimizer: a ready optimizer (e.g. peft's LoRA+ one); by default Trainer builds AdamW from learning_rate.
    """
    if eval_split not in data:
        raise ValueError(f"eval_split={eval_split!r} is not a split of data; valid: {', '.join(data)}")
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="sft_lessons_"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        warmup_steps=0.1,  # a float < 1 is a fraction of the total steps in transformers 5
        eval_strategy="epoch",  # was evaluation_strategy
        logging_strategy="steps",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        use_cpu=model.device.type == "cpu",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data[eval_split],
        processing_class=tokenizer,  # was tokenizer=
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy,
        callbacks=[timer := step_timer(), *callbacks],
        optimizers=(optimizer, None),  # None, None: Trainer's own AdamW and linear schedule
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True would otherwise print every log dict
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed_call(trainer.train)
    history = trainer.state.log_history
    result = {
        "trainable": count_parameters(model),
        "total": count_parameters(model, trainable_only=False),
        "seconds": seconds,  # the whole train() call, per-epoch evaluation included
        "steps": trainer.state.global_step,
        # the median training step: evaluation excluded, robust to a busy machine's occasional stalls
        "seconds_per_step": statistics.median(timer.steps),
        "eval_accuracy": [h["eval_accuracy"] for h in history if "eval_accuracy" in h],
        "eval_loss": [h["eval_loss"] for h in history if "eval_loss" in h],
        "train_loss": [(h["step"], h["loss"]) for h in history if "loss" in h],
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    return trainer, result
