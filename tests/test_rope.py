import math

import pytest
import torch

from sft_lessons import rope


def _llama_config(head_dim=16, heads=2, theta=10_000.0, max_pos=64, rope_parameters=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=head_dim * heads,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": theta},
    )


def _hf_rotary(config):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    return LlamaRotaryEmbedding(config)


def test_frequencies_and_wavelengths():
    inv = rope.rope_frequencies(128, 10_000.0)
    assert inv.shape == (64,) and inv[0] == 1.0
    lam = rope.wavelengths(inv)
    assert math.isclose(lam[0].item(), 2 * math.pi, rel_tol=1e-6)
    assert math.isclose(lam[-1].item(), 2 * math.pi * 10_000 ** (126 / 128), rel_tol=1e-4)  # ~54,410 tokens
    with pytest.raises(ValueError, match="even"):
        rope.rope_frequencies(7)


def test_parity_with_llama_rotary_embedding():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    config = _llama_config(head_dim=16, theta=500.0)
    rotary = _hf_rotary(config)
    positions = torch.arange(40)
    x = torch.randn(1, 2, 40, 16)  # (B, H, T, d)
    cos, sin = rotary(x, positions[None])
    torch.testing.assert_close(rotary.inv_freq, rope.rope_frequencies(16, 500.0))
    ours_cos, ours_sin = rope.rope_cos_sin(positions, rope.rope_frequencies(16, 500.0))
    torch.testing.assert_close(cos[0], ours_cos)
    torch.testing.assert_close(sin[0], ours_sin)
    q_hf, _ = apply_rotary_pos_emb(x, x, cos, sin)
    torch.testing.assert_close(rope.apply_rope(x, positions, rotary.inv_freq), q_hf)


def test_interleaved_layout_gives_the_same_scores_after_a_permutation():
    inv = rope.rope_frequencies(8)
    pos = torch.arange(10)
    q, k = torch.randn(10, 8), torch.randn(10, 8)
    scores_paper = rope.apply_rope(q, pos, inv, "interleaved") @ rope.apply_rope(k, pos, inv, "interleaved").T
    qh, kh = rope.interleaved_to_half(q), rope.interleaved_to_half(k)
    scores_hf = rope.apply_rope(qh, pos, inv, "half") @ rope.apply_rope(kh, pos, inv, "half").T
    torch.testing.assert_close(scores_paper, scores_hf)
    with pytest.raises(ValueError, match="layout"):
        rope.apply_rope(q, pos, inv, "pairs")


@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_relative_position_property(layout):
    inv = rope.rope_frequencies(32)
    q, k = torch.randn(32, dtype=torch.float64), torch.randn(32, dtype=torch.float64)

    def score(m, n):
        qm = rope.apply_rope(q[None].float(), torch.tensor([m]), inv, layout)
        kn = rope.apply_rope(k[None].float(), torch.tensor([n]), inv, layout)
        return (qm @ kn.T).item()

    for offset in (0, 3, 17):
        values = [score(m + offset, m) for m in (0, 5, 100, 1000)]
        assert max(values) - min(values) < 1e-3 * (1 + abs(values[0]))
    assert abs(score(10, 0) - score(20, 0)) > 1e-3  # it does depend on the offset


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_linear_pi_matches_transformers_and_hand_formula(factor):
    config = _llama_config(rope_parameters={"rope_type": "linear", "factor": factor, "rope_theta": 10_000.0})
    ours = rope.linear_pi_frequencies(16, 10_000.0, factor)
    torch.testing.assert_close(_hf_rotary(config).inv_freq, ours)
    # hand formula: theta_i / s, i.e. angle(m) at position m*s equals the unscaled angle at m
    torch.testing.assert_close(ours * factor, rope.rope_frequencies(16, 10_000.0))


@pytest.mark.parametrize("factor", [2.0, 4.0])
def test_ntk_theta_hand_formula(factor):
    d, theta = 128, 10_000.0
    new = rope.ntk_theta(theta, factor, d)
    assert math.isclose(new, theta * factor ** (d / (d - 2)))
    inv_old, inv_new = rope.rope_frequencies(d, theta), rope.rope_frequencies(d, new)
    assert inv_new[0] == inv_old[0]  # the fastest pair is untouched
    slowest_ratio = (inv_old[-1] / inv_new[-1]).item()
    assert math.isclose(slowest_ratio, factor, rel_tol=1e-4)  # the slowest pair is interpolated by s
    assert round(rope.ntk_theta(10_000.0, 2.0, 128)) == 20_221  # 10000 * 2 ** (128 / 126)


@pytest.mark.parametrize("seq_len", [64, 100, 256])
def test_dynamic_ntk_matches_transformers(seq_len):
    params = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10_000.0}
    rotary = _hf_rotary(_llama_config(max_pos=64, rope_parameters=params))
    x = torch.zeros(1, seq_len, 16)
    rotary(x, torch.arange(seq_len)[None])  # the decorator recomputes inv_freq for long inputs
    ours = rope.dynamic_ntk_frequencies(16, 10_000.0, 2.0, seq_len, 64)
    torch.testing.assert_close(rotary.inv_freq, ours)
    if seq_len <= 64:
        torch.testing.assert_close(ours, rope.rope_frequencies(16, 10_000.0))


@pytest.mark.parametrize("seq_len", [128, 512])
def test_dynamic_ntk_with_factor_1_is_ntk_aware_at_the_current_scale(seq_len):
    # alpha = factor * L / L0 - (factor - 1) equals s = L / L0 exactly when factor = 1
    ours = rope.dynamic_ntk_frequencies(16, 10_000.0, 1.0, seq_len, 64)
    torch.testing.assert_close(ours, rope.rope_frequencies(16, rope.ntk_theta(10_000.0, seq_len / 64, 16)))
    params = {"rope_type": "dynamic", "factor": 1.0, "rope_theta": 10_000.0}
    rotary = _hf_rotary(_llama_config(max_pos=64, rope_parameters=params))
    rotary(torch.zeros(1, seq_len, 16), torch.arange(seq_len)[None])
    torch.testing.assert_close(rotary.inv_freq, ours)


def test_yarn_attention_factor_scales_logits_by_its_square():
    inv, m = rope.yarn_frequencies(16, 10_000.0, 4.0, 64)
    q, k, pos = torch.randn(5, 16), torch.randn(5, 16), torch.arange(5)
    plain = rope.apply_rope(q, pos, inv) @ rope.apply_rope(k, pos, inv).T
    scaled = rope.apply_rope(q, pos, inv, attention_scaling=m) @ rope.apply_rope(k, pos, inv, attention_scaling=m).T
    torch.testing.assert_close(scaled, plain * m**2)


@pytest.mark.parametrize("factor", [2.0, 8.0])
def test_yarn_matches_transformers(factor):
    params = {
        "rope_type": "yarn",
        "factor": factor,
        "rope_theta": 10_000.0,
        "original_max_position_embeddings": 64,
    }
    rotary = _hf_rotary(_llama_config(head_dim=32, max_pos=int(64 * factor), rope_parameters=params))
    inv, attn = rope.yarn_frequencies(32, 10_000.0, factor, 64)
    torch.testing.assert_close(rotary.inv_freq, inv)
    assert math.isclose(rotary.attention_scaling, attn, rel_tol=1e-6)
    base = rope.rope_frequencies(32, 10_000.0)
    assert inv[0] == base[0]  # fast pairs extrapolate
    torch.testing.assert_close(inv[-1], base[-1] / factor)  # slow pairs interpolate


def test_rope_parameters_for_validates():
    params, max_pos = rope.rope_parameters_for("yarn", 4.0, 10_000.0, 64)
    assert params["original_max_position_embeddings"] == 64 and max_pos == 256
    assert rope.rope_parameters_for("dynamic", 4.0, 10_000.0, 64)[1] == 64
    with pytest.raises(ValueError, match="valid: none, linear, dynamic, yarn"):
        rope.rope_parameters_for("ntk", 2.0, 10_000.0, 64)
    with pytest.raises(ValueError, match=">= 1"):
        rope.linear_pi_frequencies(16, 10_000.0, 0.5)


@pytest.mark.parametrize("heads", [4, 8, 12])
def test_alibi_slopes_match_bloom(heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    mask = torch.ones(1, 5)
    bloom = build_alibi_tensor(mask, heads, torch.float32)  # (heads, 1, 5) = slope * key position
    torch.testing.assert_close(bloom[:, 0, 1], rope.alibi_slopes(heads))
    if heads == 8:
        assert rope.alibi_slopes(8)[0] == 0.5 and rope.alibi_slopes(8)[-1] == 1 / 256


def test_alibi_bias_is_causal_and_linear():
    bias = rope.alibi_bias(4, 5)
    assert bias.shape == (4, 5, 5)
    assert torch.isinf(bias[:, 0, 1:]).all() and (bias.diagonal(dim1=1, dim2=2) == 0).all()
    torch.testing.assert_close(bias[:, 4, 0], -4 * rope.alibi_slopes(4))
    torch.testing.assert_close(rope.alibi_bias(4, 2, 5), bias[:, 3:, :])  # last queries against all keys
