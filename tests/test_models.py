import pytest
import torch

from sft_lessons import assets, models
from sft_lessons.assets import AssetError


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_tiny_causal_lm_is_seeded_and_runs(arch):
    a, b = models.tiny_causal_lm(arch, seed=3), models.tiny_causal_lm(arch, seed=3)
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        la, lb = a(ids).logits, b(ids).logits
    assert la.shape == (1, 4, 320)
    assert torch.equal(la, lb)


def test_tiny_causal_lm_rejects_unknown_arch():
    with pytest.raises(ValueError, match="llama"):
        models.tiny_causal_lm("mamba")


def test_tiny_tokenizer_round_trip_and_chat_template():
    tok = models.tiny_tokenizer()
    text = "The movie was great."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_resolve_unknown_model_explains_hub_opt_in(monkeypatch):
    monkeypatch.delenv("SFT_LESSONS_USE_HUB", raising=False)
    with pytest.raises(AssetError, match="SFT_LESSONS_USE_HUB=1"):
        models.resolve("opt-350m")


def test_hub_opt_in_maps_names(monkeypatch):
    monkeypatch.setenv("SFT_LESSONS_USE_HUB", "1")
    assert models.resolve("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve("all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert models.resolve("opt-350m") == "facebook/opt-350m"


def test_cached_load_of_a_local_checkpoint(tmp_path):
    model, tok = models.tiny_causal_lm(), models.tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = models.load_causal_lm(str(tmp_path), device="cpu")
    ids = loaded_tok("great movie", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(models.mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))


@pytest.mark.skipif(not assets.is_cached("smollm2-135m-instruct"), reason="run `sft-lessons fetch` first")
def test_real_smollm2_loads_from_cache():
    model, tok = models.load_causal_lm(device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert getattr(model.config, "quantization_config", None) is None


@pytest.mark.skipif(not assets.is_cached("all-minilm-l6-v2"), reason="run `sft-lessons fetch` first")
def test_real_minilm_classifier_and_encoder():
    clf, tok = models.load_sequence_classifier(num_labels=2, device="cpu")
    assert clf.config.num_labels == 2
    enc, tok = models.load_encoder(device="cpu")
    emb = models.sentence_embeddings(enc, tok, ["a cat", "a kitten", "stock prices"])
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
