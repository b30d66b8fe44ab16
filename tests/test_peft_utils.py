import pytest
import torch

from sft_lessons import peft_utils as U
from sft_lessons.memory import count_parameters
from sft_lessons.models import tiny_causal_lm

peft = pytest.importorskip("peft")


def _tiny_adalora(total_step=20, init_r=6, target_r=2):
    cfg = peft.AdaLoraConfig(
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "v_proj"],
        init_r=init_r,
        target_r=target_r,
        tinit=2,
        tfinal=4,
        deltaT=2,
        lora_alpha=8,
        total_step=total_step,
    )
    return peft.get_peft_model(tiny_causal_lm("llama", seed=0), cfg)


def _lm_data(n=40, seq=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 320, (n, seq), generator=g)
    return [
        {"input_ids": row, "attention_mask": torch.ones(seq, dtype=torch.long), "labels": row} for row in ids
    ]


def test_rank_allocation_and_table_on_fresh_adalora():
    model = _tiny_adalora()
    ranks = U.rank_allocation(model)
    assert len(ranks) == 4  # 2 layers x (q_proj, v_proj)
    # lora_E starts at zero in peft, so nothing counts as "kept" before training updates it
    assert set(ranks.values()) == {0}
    table = U.rank_table({name: 6 for name in ranks})
    assert table.shape == (2, 2) and list(table.columns) == ["q_proj", "v_proj"]


def test_adalora_callback_changes_ranks_inside_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    total_step, init_r, target_r = 20, 6, 2
    model = _tiny_adalora(total_step, init_r, target_r)
    callback = U.adalora_callback(model)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=total_step,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_lm_data(), callbacks=[callback])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    steps, budgets, kept = zip(*callback.history, strict=True)
    assert list(steps) == list(range(total_step))  # called once per optimizer step, with the 0-based step
    assert budgets[0] == init_r * 4 and budgets[-1] == target_r * 4  # 4 matrices; cubic schedule in between
    assert all(a >= b for a, b in zip(budgets[:-1], budgets[1:], strict=True))
    ranks = U.rank_allocation(model)
    # the final budget is target_r per matrix on average; single matrices may differ
    assert sum(ranks.values()) == target_r * len(ranks)
    assert max(kept) > target_r * len(ranks) == kept[-1]  # more singular values alive before the final budget
    pattern = model.peft_config["default"].rank_pattern  # peft's own record of the final allocation
    for name, rank in ranks.items():
        (kept,) = [v for k, v in pattern.items() if name.endswith(k.split(".lora_E")[0])]
        assert sum(kept) == rank


def test_without_the_callback_nothing_is_pruned(tmp_path):
    model = _tiny_adalora()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {k: torch.stack([d[k] for d in _lm_data(4)]) for k in ("input_ids", "attention_mask", "labels")}
    for _ in range(20):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert set(U.rank_allocation(model).values()) == {6}


def test_trainable_parameters_and_saved_size():
    model = peft.get_peft_model(
        tiny_causal_lm("llama", seed=0), peft.LoraConfig(r=4, target_modules=["q_proj"])
    )
    trainable, total = (count_parameters(model), count_parameters(model, trainable_only=False))
    assert trainable == 2 * 4 * (64 + 64)  # 2 layers, q_proj is 64 -> 64: r * (d + k)
    assert total > trainable
    assert trainable * 4 < U.saved_size_bytes(model) < trainable * 4 + 20_000  # weights + json metadata


def test_predict_labels_matches_argmax_in_order_and_restores_mode():
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
        )
    )
    rows = [[1, 5, 7, 2], [1, 9, 2], [1, 3, 4, 6, 8, 2], [1, 2]]  # different lengths: the collator pads
    data = Dataset.from_dict(
        {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "label": [0, 1, 0, 1]}
    )

    class PadOnly:  # DataCollatorWithPadding needs only tokenizer.pad
        def pad(self, features, **kwargs):
            width = max(len(f["input_ids"]) for f in features)
            return {
                key: torch.tensor([f[key] + [0] * (width - len(f[key])) for f in features])
                for key in ("input_ids", "attention_mask")
            }

    model.train()
    predictions = U.predict_labels(model, PadOnly(), data, batch_size=3)
    assert model.training and predictions.shape == (4,)
    model.eval()
    with torch.no_grad():
        one_by_one = [
            int(model(input_ids=torch.tensor([r]), attention_mask=torch.ones(1, len(r))).logits.argmax())
            for r in rows
        ]
    assert predictions.tolist() == one_by_one
