import math

import pytest
import torch
from torch import nn

from sft_lessons import lora, timing
from sft_lessons.lora import (
    LinearLayer_LoRA,
    convert_linear_layer_to_lora,
    convert_lora_to_linear_layer,
    lora_state_dict,
    only_optimize_lora_parameters,
)
from sft_lessons.models import tiny_causal_lm

IDS = torch.tensor([[1, 5, 9, 2, 40, 7], [3, 8, 100, 6, 11, 2]])


def _randomise(model, seed=1):
    """Give every LoRA factor random values (B too), so the update is not zero."""
    gen = torch.Generator().manual_seed(seed)
    for layer in lora.lora_layers(model).values():
        with torch.no_grad():
            layer.lora_right_weight.copy_(torch.randn(layer.lora_right_weight.shape, generator=gen) * 0.1)
            layer.lora_left_weight.copy_(torch.randn(layer.lora_left_weight.shape, generator=gen) * 0.1)
    return model


def _lora_model(arch="llama", targets=("q_proj", "v_proj"), r=4, scaling=8, dropout=0.0):
    model = tiny_causal_lm(arch, seed=0)
    return convert_linear_layer_to_lora(
        model, list(targets), lora_dim=r, lora_scaling=scaling, lora_dropout=dropout
    )


def test_init_keeps_base_logits():
    base = tiny_causal_lm("llama", seed=0)
    with torch.no_grad():
        expected = base(IDS).logits
        got = _lora_model()(IDS).logits
    assert torch.equal(got, expected)  # B = 0 so BA = 0 exactly


@pytest.mark.parametrize("arch", ["llama", "opt"])  # opt's projections have a bias
def test_parity_with_peft_logits_and_gradients(arch):
    from peft import LoraConfig, get_peft_model

    r, scaling = 4, 8
    ours = _randomise(_lora_model(arch, r=r, scaling=scaling))
    only_optimize_lora_parameters(ours)
    config = LoraConfig(r=r, lora_alpha=scaling, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    theirs = get_peft_model(tiny_causal_lm(arch, seed=0), config)
    assert lora.copy_lora_to_peft(ours, theirs) == 4
    peft_layers = dict(theirs.base_model.model.named_modules())
    pairs = {name: (mine, peft_layers[name]) for name, mine in lora.lora_layers(ours).items()}

    out_ours, out_theirs = ours(IDS, labels=IDS), theirs(input_ids=IDS, labels=IDS)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, atol=1e-5, rtol=1e-5)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    for mine, module in pairs.values():
        torch.testing.assert_close(mine.lora_right_weight.grad.t(), module.lora_A["default"].weight.grad)
        torch.testing.assert_close(mine.lora_left_weight.grad.t(), module.lora_B["default"].weight.grad)
    assert lora.count_parameters(ours) == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


def test_merge_unmerge_round_trip_is_idempotent():
    model = _randomise(_lora_model("opt")).eval()
    layers = list(lora.lora_layers(model).values())
    w0 = [layer.weight.detach().clone() for layer in layers]
    with torch.no_grad():
        unfused = model(IDS).logits
        convert_lora_to_linear_layer(model)
        convert_lora_to_linear_layer(model)  # fusing twice changes nothing
        fused = model(IDS).logits
        for layer, w in zip(layers, w0, strict=True):
            assert layer.fuse_lora
            torch.testing.assert_close(layer.weight, w + layer.delta_weight())
        for layer in layers:
            layer.unfuse_lora_weight().unfuse_lora_weight()  # returns self; second call is a no-op
        again = model(IDS).logits
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, unfused, atol=1e-6, rtol=1e-6)
    for layer, w in zip(layers, w0, strict=True):
        torch.testing.assert_close(layer.weight, w, atol=1e-6, rtol=0)


def test_gradients_reach_only_lora_factors():
    model = _randomise(_lora_model())
    only_optimize_lora_parameters(model)
    model(IDS, labels=IDS).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(name.endswith(lora.LORA_KEYS) for name in with_grad)
    assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name in with_grad)


def test_layer_freezes_its_base_weight_even_without_only_optimize():
    model = _lora_model()
    for layer in lora.lora_layers(model).values():
        assert not layer.weight.requires_grad
        assert layer.lora_right_weight.requires_grad and layer.lora_left_weight.requires_grad


def test_trainable_parameters_equal_the_formula():
    model = _lora_model(targets=("proj",), r=8)  # every projection of the tiny llama
    only_optimize_lora_parameters(model)
    config = dict(model.config.to_dict(), model_type="llama")
    expected = lora.lora_count_table(config, [8])[0]["per_model"]
    assert lora.count_parameters(model) == expected
    shapes = lora.decoder_linear_shapes(config)
    assert expected == 2 * sum(8 * (d + k) for d, k in shapes.values())  # r(d + k), not r(d + d)
    for name, layer in lora.lora_layers(model).items():
        d, k = shapes[name.rsplit(".", 1)[-1]]
        assert layer.lora_B.shape == (d, 8) and layer.lora_A.shape == (8, k)


def test_state_dict_holds_only_lora_keys():
    model = only_optimize_lora_parameters(_lora_model(r=2))
    state = lora_state_dict(model)
    assert len(state) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all(key.endswith(lora.LORA_KEYS) for key in state)
    assert sum(t.numel() for t in state.values()) == lora.count_parameters(model)


def test_bias_none_and_a_plain_tensor_weight():
    layer = LinearLayer_LoRA(torch.randn(6, 5), lora_dim=2)
    assert layer.bias is None and isinstance(layer.weight, nn.Parameter) and not layer.weight.requires_grad
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), x @ layer.weight.t())


def test_forward_matches_the_formula_with_bias():
    linear = nn.Linear(5, 6)
    layer = LinearLayer_LoRA(linear.weight, 3, 6, 0, linear.bias)
    nn.init.normal_(layer.lora_left_weight)
    x = torch.randn(4, 5)
    expected = x @ linear.weight.t() + linear.bias + (6 / 3) * x @ layer.lora_A.t() @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected)


def test_a_init_uses_fan_in_k_like_peft():
    layer = LinearLayer_LoRA(torch.randn(64, 400), lora_dim=4)
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) bound with fan_in = k
    assert layer.lora_right_weight.abs().max() <= bound
    assert layer.lora_right_weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(layer.lora_left_weight) == 0


def test_dtype_and_device_follow_the_base_weight():
    layer = LinearLayer_LoRA(nn.Parameter(torch.randn(6, 5, dtype=torch.bfloat16)), lora_dim=2)
    assert layer.lora_right_weight.dtype == layer.lora_left_weight.dtype == torch.bfloat16
    assert layer.lora_right_weight.device == layer.weight.device
    assert layer(torch.randn(2, 5, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_lora_dim_names_the_value(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        LinearLayer_LoRA(torch.randn(4, 4), lora_dim=bad)


def test_unmatched_module_name_lists_candidates():
    with pytest.raises(ValueError, match=r"'attention\.query'.*q_proj"):
        convert_linear_layer_to_lora(tiny_causal_lm("llama"), "attention.query", lora_dim=4)


def test_dropout_keyword_alias_and_conflict():
    old = LinearLayer_LoRA(torch.randn(4, 4), 2, 1, 0.1)
    new = LinearLayer_LoRA(torch.randn(4, 4), 2, lora_dropout=0.1)
    assert old.lora_dropout.p == new.lora_dropout.p == 0.1
    assert isinstance(LinearLayer_LoRA(torch.randn(4, 4), 2).lora_dropout, nn.Identity)
    model = convert_linear_layer_to_lora(tiny_causal_lm("llama"), "q_proj", 2, lora_droppout=0.2)
    assert all(m.lora_dropout.p == 0.2 for m in lora.lora_layers(model).values())
    with pytest.raises(ValueError, match="pass only one"):
        LinearLayer_LoRA(torch.randn(4, 4), 2, 1, 0.1, lora_dropout=0.3)


def test_train_and_eval_return_self_and_reach_dropout():
    layer = LinearLayer_LoRA(torch.randn(4, 4), 2, lora_dropout=0.5)
    assert layer.eval() is layer and not layer.training and not layer.lora_dropout.training
    assert layer.train() is layer and layer.training and layer.lora_dropout.training
    model = _lora_model(dropout=0.5)
    assert model.eval() is model
    assert not any(m.training for m in lora.lora_layers(model).values())


def test_training_a_fused_layer_raises():
    layer = LinearLayer_LoRA(torch.randn(4, 4), 2).fuse().train()
    with pytest.raises(RuntimeError, match="unfuse"):
        layer(torch.randn(1, 4))
    with torch.no_grad():
        layer(torch.randn(1, 4))  # inference on a fused layer is fine


def test_energy_captured_of_a_rank_two_matrix():
    delta = torch.randn(30, 2) @ torch.randn(2, 20)
    s = torch.linalg.svdvals(delta)
    assert lora.energy_captured(s, 2) == pytest.approx(1.0)
    assert 0 < lora.energy_captured(s, 1) < 1


def test_full_finetune_delta_restores_the_weight():
    model = tiny_causal_lm("llama")
    name = "model.layers.0.self_attn.v_proj"
    w0 = model.get_submodule(name).weight.detach().clone()
    delta, losses = lora.full_finetune_delta(
        model, name, [{"input_ids": IDS, "labels": IDS}], steps=3, lr=1e-2
    )
    assert delta.shape == w0.shape and delta.abs().max() > 0 and len(losses) == 3
    assert torch.equal(model.get_submodule(name).weight, w0)
    assert all(p.requires_grad for p in model.parameters())


def test_full_finetune_deltas_snapshots_match_shorter_runs():
    model = tiny_causal_lm("llama")
    name, batches = "model.layers.0.self_attn.v_proj", [{"input_ids": IDS, "labels": IDS}]
    deltas, losses = lora.full_finetune_deltas(model, name, batches, steps=[1, 3], lr=1e-2)
    one_step, _ = lora.full_finetune_delta(model, name, batches, steps=1, lr=1e-2)
    assert sorted(deltas) == [1, 3] and len(losses) == 3
    torch.testing.assert_close(deltas[1], one_step)  # the snapshot is the update after exactly one step
    assert not torch.equal(deltas[1], deltas[3])
    with pytest.raises(ValueError, match="positive"):
        lora.full_finetune_deltas(model, name, batches, steps=[0], lr=1e-2)


def test_time_interleaved_returns_medians():
    calls = []
    medians = timing.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3
    )
    assert set(medians) == {"a", "b"} and calls == ["a", "b", "a", "b", "b", "a", "a", "b"]


def test_copy_to_peft_refuses_a_scaling_mismatch():
    from peft import LoraConfig, get_peft_model

    ours = _lora_model(r=4, scaling=8)
    theirs = get_peft_model(
        tiny_causal_lm(), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    with pytest.raises(ValueError, match="lora_alpha = lora_scaling"):
        lora.copy_lora_to_peft(ours, theirs)


def test_unknown_model_type_and_target():
    with pytest.raises(ValueError, match="'gpt2'"):
        lora.decoder_linear_shapes({"model_type": "gpt2", "hidden_size": 8})
    opt = {"model_type": "opt", "hidden_size": 8, "ffn_dim": 16, "num_hidden_layers": 1}
    with pytest.raises(ValueError, match="gate_proj"):
        lora.lora_count_table(opt, [1], targets=["gate_proj"])
