"""sft-lessons: a hands-on course on supervised fine-tuning (SFT) of LLMs, offline and CPU-friendly.

The public surface is small; import submodules for the rest (no heavy imports happen here).
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "fetch",
    "load_causal_lm",
    "load_sequence_classifier",
    "load_reviews",
    "load_ood_reviews",
    "load_jsonl",
    "get_device",
    "describe_environment",
    "setup_notebook",
    "tiny_causal_lm",
]

_LAZY = {
    "fetch": "assets",
    "load_causal_lm": "models",
    "load_sequence_classifier": "models",
    "tiny_causal_lm": "models",
    "load_reviews": "data",
    "load_ood_reviews": "data",
    "load_jsonl": "data",
    "get_device": "device",
    "describe_environment": "device",
    "setup_notebook": "device",
}


def _import_tqdm_auto_quietly() -> None:
    """Import tqdm.auto once with its warnings off.

    huggingface_hub (under transformers and datasets) imports tqdm.auto; in a Jupyter kernel without ipywidgets that
    import prints "TqdmWarning: IProgress not found" on stderr and falls back to the text bar, which is what the course
    uses anyway. Importing it here first keeps that warning out of every notebook's first output.
    """
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("tqdm.auto")


_import_tqdm_auto_quietly()


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sft_lessons' has no attribute {name!r}")
