import pytest
import torch

from sft_lessons import long_context as lc


@pytest.fixture(scope="module")
def task():
    return lc.LongRangeTask()


def test_batch_layout(task):
    ids, labels, is_passkey = task.batch(4, 16, torch.Generator().manual_seed(0))
    assert ids.shape == labels.shape == (4, 16) and is_passkey.tolist() == [False, False, True, True]
    copy, copy_labels = ids[~is_passkey], labels[~is_passkey]
    assert torch.equal(copy[:, :8], copy[:, 8:])  # the second half repeats the first
    assert (copy_labels[:, :9] == -100).all() and torch.equal(copy_labels[:, 9:], copy[:, 9:])
    for row, lab in zip(ids[is_passkey], labels[is_passkey], strict=True):
        values = row[(row >= task.num_tokens) & (row < task.query_id)]
        assert len(values) == 2 and values[0] == values[1] == row[-1]  # hidden once, answered at the end
        assert row[-2] == task.query_id and (lab[:-1] == -100).all() and lab[-1] == row[-1]
    with pytest.raises(ValueError, match="seq_len"):
        task.batch(2, 7, torch.Generator())


def test_task_losses_split_by_kind(task):
    ids, labels, is_passkey = task.batch(4, 16, torch.Generator().manual_seed(1))
    logits = torch.zeros(4, 16, task.vocab_size)  # uniform predictions
    out = lc.task_losses(logits, labels, is_passkey)
    expected = torch.log(torch.tensor(float(task.vocab_size)))
    torch.testing.assert_close(out["copy_loss"], expected)
    torch.testing.assert_close(out["passkey_loss"], expected)
    perfect = torch.nn.functional.one_hot(labels.clamp(min=0), task.vocab_size).float() * 50
    out = lc.task_losses(torch.roll(perfect, -1, dims=1), labels, is_passkey)  # position t predicts t+1
    assert out["copy_acc"] == 1 and out["passkey_acc"] == 1 and out["copy_loss"] < 1e-6


def test_tiny_llama_trains_and_rescales(task):
    cfg = lc.TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    model = lc.build_tiny_llama(task, cfg)
    history = lc.train(model, task, steps=3, seq_len=32, batch_size=2, eval_every=3)
    assert len(history["loss"]) == 3 and [s for s, _ in history["eval"]] == [0, 3]
    base = model.model.rotary_emb.inv_freq
    pi = lc.rescale_rope(model, "linear", 4.0, cfg.train_len)
    torch.testing.assert_close(pi.model.rotary_emb.inv_freq, base / 4)  # the new config really took effect
    assert pi.config.max_position_embeddings == 4 * cfg.train_len
    for name, p in model.state_dict().items():
        torch.testing.assert_close(pi.state_dict()[name], p)
    metrics = lc.evaluate(pi, task, 64)
    assert set(metrics) == {"copy_loss", "copy_acc", "passkey_loss", "passkey_acc"}


def test_alibi_model_uses_custom_attention(task):
    cfg = lc.TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    model = lc.build_tiny_llama(task, cfg, alibi=True)
    assert model.config._attn_implementation == "alibi"
    ids = task.batch(1, 24, torch.Generator())[0]
    with torch.no_grad():
        full = model(input_ids=ids).logits
        prefix = model(input_ids=ids[:, :10]).logits
    torch.testing.assert_close(full[:, :10], prefix, atol=1e-5, rtol=1e-4)  # causal: the future is not seen
    cos, sin = model.model.rotary_emb(torch.zeros(1, 4, 16), torch.arange(4)[None])
    assert (cos == 1).all() and (sin == 0).all()  # no rotation: ALiBi is the only position signal


def test_alibi_attention_matches_eager_with_bias():
    from types import SimpleNamespace

    from sft_lessons.rope import alibi_bias

    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out, probs = lc.alibi_attention(SimpleNamespace(num_key_value_groups=1), q, k, v, None, scaling=0.5)
    ref = torch.softmax(q @ k.transpose(2, 3) * 0.5 + alibi_bias(2, 5), dim=-1)
    torch.testing.assert_close(probs, ref)
    torch.testing.assert_close(out, (ref @ v).transpose(1, 2))


def test_passkey_prompt_and_cost_fit():
    from sft_lessons.models import tiny_tokenizer

    tok = tiny_tokenizer()
    prompt = lc.passkey_prompt(tok, 1000, "12345", depth=0.0)
    assert prompt.count("12345") == 2 and prompt.endswith("The pass key is")
    assert abs(len(tok(prompt)["input_ids"]) - 1000) < 100
    assert prompt.index("12345") < len(prompt) // 8
    with pytest.raises(ValueError, match="depth"):
        lc.passkey_prompt(tok, 300, "1", depth=2)
    a, b = lc.fit_forward_cost({100: 1.0 + 0.01, 200: 2.0 + 0.04, 400: 4.0 + 0.16})
    assert abs(a - 0.01) < 1e-6 and abs(b - 1e-6) < 1e-9
    a, b = lc.fit_forward_cost({100: 5.0, 200: 4.0, 400: 9.0})  # noisy: never a negative coefficient
    assert a >= 0 and b >= 0


def test_time_forward_on_a_tiny_model(monkeypatch):
    from sft_lessons.models import tiny_causal_lm

    model = tiny_causal_lm("llama")
    for clock in ("wall", "cpu"):
        times = lc.time_forward(model, (8, 16), clock=clock)
        assert set(times) == {8, 16} and all(t >= 0 for t in times.values())
    with pytest.raises(ValueError, match="clock"):
        lc.time_forward(model, (8,), clock="gpu")
    # what is timed: one forward of exactly n tokens per length, via timing.interleaved_times, best of repeats
    seen, asked = [], []
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )

    def fake_interleaved_times(fns, repeats, warmup, device, clock):
        asked.append((sorted(fns), repeats, warmup, clock))
        for fn in fns.values():
            fn()
        return {8: [0.3, 0.1, 0.2], 16: [0.5, 0.4, 0.6]}

    monkeypatch.setattr(lc, "interleaved_times", fake_interleaved_times)
    assert lc.time_forward(model, (8, 16), repeats=3, clock="cpu") == {8: 0.1, 16: 0.4}
    assert asked == [([8, 16], 3, 0, "cpu")] and seen == [(1, 8), (1, 16)]


def _tiny(task, heads=2):
    return lc.TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads)


def test_score_examples_is_fixed_and_chunk_free(task):
    model = lc.build_tiny_llama(task, _tiny(task)).eval()
    out = lc.score_examples(model, task, 16, n_copy=5, n_passkey=7, batch_size=3)
    assert out["copy_correct"].shape == (5, 7) and out["passkey_correct"].shape == (7,)
    assert out["copy_ids"].shape == (5, 16) and out["copy_pred"].shape == (5, 7)
    again = lc.score_examples(model, task, 16, n_copy=5, n_passkey=7, batch_size=64)  # one chunk
    for key in ("copy_correct", "passkey_correct", "copy_pred"):
        assert torch.equal(out[key], again[key])  # the same examples, whatever the chunking
    assert abs(out["copy_loss"] - again["copy_loss"]) < 1e-5
    assert torch.equal(out["copy_pred"] == out["copy_ids"][:, 9:], out["copy_correct"])  # flags = prediction hits
    copy_only = lc.score_examples(model, task, 16, n_copy=2, n_passkey=0)
    assert "passkey_correct" not in copy_only and torch.equal(copy_only["copy_ids"], out["copy_ids"][:2])


def test_copy_accuracy_resamples_sequences():
    flags = torch.tensor([[True] * 4, [False] * 4, [True, True, False, False], [True] * 4])
    p = lc.copy_accuracy(flags)
    assert (p.k, p.n) == (10, 16) and p.low < p.value < p.high
    assert p.low >= 0.0 and p.high <= 1.0
    same = lc.copy_accuracy(torch.ones(3, 5, dtype=torch.bool))
    assert (same.low, same.high) == (1.0, 1.0)


def test_copy_source_profile_finds_the_offset():
    ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3, 4], [5, 6, 7, 8, 5, 6, 7, 8]])  # (2, 8): targets at 5, 6, 7
    right = ids[:, 5:]
    profile = lc.copy_source_profile(ids, right)
    assert profile.shape == (5,) and profile[0] == 1 and profile[4] == 1  # k = 0 (itself) and k = L/2
    assert profile[1:4].max() == 0
    one_back = ids[:, 4:7]  # predicts the token just before the target
    assert lc.copy_source_profile(ids, one_back).argmax() == 1


def test_mean_sd_table():
    table = lc.mean_sd_table({("a", 64): [1.0, 3.0], ("a", 128): [2.0, 2.0], ("b", 64): [0.5]}, digits=2)
    assert list(table.index) == ["a", "b"] and list(table.columns) == [64, 128]
    assert table.loc["a", 64] == "2.00 ± 1.41" and table.loc["a", 128] == "2.00 ± 0.00"
    assert table.loc["b", 64] == "0.50 ± 0.00" and table.loc["b", 128] == ""


@pytest.mark.parametrize("method, factor", [("none", 1.0), ("yarn", 4.0), ("dynamic", 1.0)])
def test_first_layer_logits_match_a_forward(task, method, factor):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = lc.rescale_rope(lc.build_tiny_llama(task, _tiny(task)), method, factor, 64)
    ids = task.batch(1, 48, torch.Generator().manual_seed(3))[0]  # (1, 48)
    table = lc.first_layer_logits(model, 48)  # (48, H, V, V)
    layer = model.model.layers[0]
    with torch.no_grad():
        h = layer.input_layernorm(model.model.embed_tokens(ids))  # (1, T, hidden)
        q = layer.self_attn.q_proj(h).view(1, 48, 2, -1).transpose(1, 2)  # (1, H, T, hd)
        k = layer.self_attn.k_proj(h).view(1, 48, 2, -1).transpose(1, 2)
        cos, sin = model.model.rotary_emb(h, torch.arange(48)[None])
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        logits = q @ k.transpose(2, 3) * layer.self_attn.scaling  # (1, H, T, T)
    if method == "yarn":
        assert model.model.rotary_emb.attention_scaling > 1  # the temperature is part of what is compared
    tok = ids[0]
    for i, j in [(47, 0), (30, 29), (12, 12), (40, 7)]:
        torch.testing.assert_close(table[i - j, :, tok[i], tok[j]], logits[0, :, i, j], atol=1e-4, rtol=1e-4)
