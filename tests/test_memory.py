import pytest
import torch

from sft_lessons import memory as M


def test_full_fine_tuning_fp32_adamw_is_16_bytes_per_parameter():
    est = M.estimate_training_memory(1_000_000, 1_000_000, weight_bits=32)
    # 4 weights + 4 gradients + 2 * 4 Adam states
    assert est["weights"] == 4e6 and est["gradients"] == 4e6 and est["optimizer_states"] == 8e6
    assert est["total"] == 16e6 and est["quant_constants"] == 0 and est["master_weights"] == 0


def test_mixed_precision_with_master_weights():
    est = M.estimate_training_memory(10, 10, weight_bits=16, master_weights=True)
    assert est["total"] == 10 * (2 + 2 + 8 + 4)  # the classic 16 bytes/param of mixed-precision Adam


def test_qlora_paper_full_fine_tuning_65b_is_780_gb():
    # 16-bit weights and gradients + fp32 Adam states = 12 bytes/param; QLoRA's ">780 GB" for 65B
    est = M.estimate_training_memory(65e9, 65e9, weight_bits=16)
    assert est["total"] / M.GB == pytest.approx(780)


def test_lora_only_trainable_params_pay_for_gradients_and_states():
    est = M.estimate_training_memory(1000 + 10, 10, weight_bits=16)
    assert est["weights"] == 1010 * 2
    assert est["gradients"] == 10 * 2 and est["optimizer_states"] == 10 * 8


def test_nf4_weights_and_constants_by_hand():
    n, a = 64 * 256 * 10, 100
    plain = M.estimate_training_memory(n + a, a, weight_bits=4)
    assert plain["weights"] == n / 2 + a * 2  # frozen 4-bit, adapters 16-bit
    assert plain["quant_constants"] == n / 64 * 4  # one fp32 absmax per 64 weights
    dq = M.estimate_training_memory(n + a, a, weight_bits=4, double_quant=True)
    # int8 absmax per 64 weights + an fp32 scale per 256 blocks
    assert dq["quant_constants"] == pytest.approx(n / 64 * 1 + n / (64 * 256) * 4)


def test_optimizers_and_validation():
    sgd = M.estimate_training_memory(100, 100, optimizer="sgd")
    assert sgd["optimizer_states"] == 0
    assert M.estimate_training_memory(100, 100, optimizer="adamw_8bit")["optimizer_states"] == 200
    with pytest.raises(ValueError, match="valid: adamw"):
        M.estimate_training_memory(100, 100, optimizer="lion")
    with pytest.raises(ValueError, match="weight_bits"):
        M.estimate_training_memory(100, 100, weight_bits=3)
    with pytest.raises(ValueError, match="trainable_params"):
        M.estimate_training_memory(100, 200)


def test_activation_formula_by_hand():
    # s=b=h=a=1, one layer, 16-bit: 34 + 5 = 39 bytes
    assert M.activation_memory(1, 1, 1, 1, 1) == 39
    full = M.activation_memory(2, 128, 64, 4, 4)
    ckpt = M.activation_memory(2, 128, 64, 4, 4, checkpointing=True)
    assert full == 4 * 128 * 2 * 64 * (34 + 5 * 4 * 128 / 64)
    assert ckpt == 4 * 2 * 128 * 2 * 64 + full / 4


def test_lora_parameter_count():
    assert M.lora_parameter_count([(384, 384), (1536, 384)], r=8) == 8 * 768 + 8 * 1920


def test_exact_accounting_on_a_tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    model[0].weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    x = torch.randn(4, 8)
    model(x).sum().backward()
    opt.step()
    assert M.model_bytes(model) == (8 * 16 + 16 + 16 * 2 + 2) * 4
    assert M.model_bytes(model, trainable_only=True) == (16 + 16 * 2 + 2) * 4
    # AdamW: exp_avg + exp_avg_sq per trainable value, plus a scalar step per tensor
    assert M.optimizer_state_bytes(opt) == 2 * (16 + 32 + 2) * 4 + 3 * 4
    # saved for backward: ReLU output (4x16); first linear's input not needed (frozen weight, but bias trains)
    saved = M.saved_activation_bytes(model, input=x)
    assert 4 * 16 * 4 <= saved <= 3 * 4 * 16 * 4
    measured = M.measured_training_memory(model, opt, {"input": x})
    assert measured["total"] == sum(v for k, v in measured.items() if k != "total")


def test_format_breakdown():
    assert M.format_breakdown({"total": 2.5e9}) == {"total": 2.5}


def test_unquantized_params_stay_16_bit_without_constants():
    n, trainable, embed = 1_000_000, 10_000, 200_000
    q = M.estimate_training_memory(n, trainable, weight_bits=4, unquantized_params=embed)
    quantized = n - trainable - embed
    assert q["weights"] == quantized * 4 / 8 + embed * 2 + trainable * 2
    assert q["quant_constants"] == quantized * 32 / 64 / 8  # none for the 16-bit embeddings
    full = M.estimate_training_memory(n, trainable, weight_bits=4)
    assert q["weights"] > full["weights"]  # keeping the embeddings wide costs memory
    fp32 = M.estimate_training_memory(n, trainable, weight_bits=32, unquantized_params=embed)
    assert fp32["weights"] == (n - trainable) * 4 + trainable * 4  # nothing is narrower than 32 bits here
    with pytest.raises(ValueError, match="unquantized_params"):
        M.estimate_training_memory(n, trainable, weight_bits=4, unquantized_params=n)
