"""Model loading: real cached weights (offline), the opt-in hub path, tiny random models (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from .assets import REGISTRY, AssetError, fetch
from .device import get_device
from .settings import use_hub

# The seed material's own choices; reachable only through the opt-in hub path.
HUB_ONLY = {
    "distilbert-base-uncased": "distilbert-base-uncased",
    "opt-350m": "facebook/opt-350m",
    "mt0-large": "bigscience/mt0-large",
}

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve(name: str) -> str:
    """A local directory for `name` (offline cache), or a hub id when SFT_LESSONS_USE_HUB=1."""
    if use_hub():
        if name in REGISTRY:
            return REGISTRY[name].hub_id
        return HUB_ONLY.get(name, name)
    if name in REGISTRY:
        return str(fetch(name))
    if os.path.isdir(name):
        return name
    raise AssetError(
        f"unknown model {name!r}; offline models: {', '.join(sorted(REGISTRY))}. "
        f"Hub models such as {', '.join(sorted(HUB_ONLY))} need SFT_LESSONS_USE_HUB=1 and internet access."
    )


def quiet_from_pretrained(cls, path, **kwargs):
    """from_pretrained without the progress bar and the 'newly initialized weights' chatter."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return cls.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:  # restore, never force on: setup_notebook() may have turned the bars off for good
            hf_logging.enable_progress_bar()


def load_causal_lm(name: str = "smollm2-135m-instruct", device=None, dtype=None):
    """(model, tokenizer) for a causal LM, in eval mode on `device` (default: get_device())."""
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = quiet_from_pretrained(AutoModelForCausalLM, path, dtype=dtype or torch.float32)
    model.to(device or get_device()).eval()
    return model, tokenizer


def load_sequence_classifier(name: str = "all-minilm-l6-v2", num_labels: int = 2, device=None):
    """(model, tokenizer): the encoder with a new, randomly initialised classification head."""
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = quiet_from_pretrained(AutoModelForSequenceClassification, path, num_labels=num_labels)
    return model.to(device or get_device()), tokenizer


def load_encoder(name: str = "all-minilm-l6-v2", device=None):
    """(model, tokenizer): the bare encoder, for sentence embeddings."""
    path = resolve(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = quiet_from_pretrained(AutoModel, path)
    return model.to(device or get_device()).eval(), tokenizer


def mean_pool(last_hidden_state, attention_mask):
    """(batch, seq, hidden), (batch, seq) -> (batch, hidden) mean over real tokens."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)  # (B, T, 1)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def sentence_embeddings(model, tokenizer, sentences, normalize: bool = True):
    """list[str] -> (n, hidden) mean-pooled (and L2-normalised) embeddings."""
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    emb = mean_pool(hidden, batch["attention_mask"])
    return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


TINY_CORPUS = (
    "The movie was great and the acting was wonderful. The plot was terrible and boring. "
    "I loved the music, I hated the ending. It was not good, it was bad. Positive. Negative. "
    "Review: a fantastic, funny film. Sentiment: positive. Review: an awful, dull mess. Sentiment: negative. "
    "Human: what is the capital of France? Assistant: Answer: Paris is the capital of France. "
    "The quick brown fox jumps over the lazy dog. Numbers 0 1 2 3 4 5 6 7 8 9 and keys, values, copy."
)


def tiny_tokenizer(vocab_size: int = 320):
    """A small byte-level BPE tokenizer trained on a built-in corpus, with ChatML special tokens (offline)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


_TINY_DEFAULTS = {
    "llama": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
    "opt": dict(
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        word_embed_proj_dim=64,
    ),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=512),
}


def tiny_causal_lm(arch: str = "llama", seed: int = 0, vocab_size: int = 320, **overrides):
    """A small randomly initialised causal LM (seeded), for unit tests and mechanism demos."""
    if arch not in _TINY_DEFAULTS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(_TINY_DEFAULTS)}")
    kwargs = {**_TINY_DEFAULTS[arch], "vocab_size": vocab_size, **overrides}
    config = AutoConfig.for_model(arch, **kwargs)
    config.pad_token_id = config.eos_token_id = 2  # <|im_end|> in tiny_tokenizer()
    config.bos_token_id = 1
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()
