"""Where the course's folders are: notebooks/, images/, build/ (第 0 章, notebooks/00_overview.ipynb)."""

from __future__ import annotations

from pathlib import Path

from .settings import cache_root


def checkout_root() -> Path | None:
    """The checkout the package runs from (an editable install), or None for an installed copy."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "notebooks").is_dir() and (here / "pyproject.toml").is_file() else None


def find_checkout() -> Path | None:
    """The package's own checkout, else the nearest folder above cwd with notebooks/ and pyproject.toml, else None."""
    root = checkout_root()
    if root is not None:
        return root
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return None


def project_root() -> Path:
    """The course checkout (see find_checkout); the current folder when there is none (nothing is written there)."""
    return find_checkout() or Path.cwd()


def notebooks_dir() -> Path:
    """The committed notebooks."""
    return project_root() / "notebooks"


def images_dir() -> Path:
    """The committed diagrams that notebooks and the README show (redrawn only by `sft-lessons figures`).

    Without a checkout (an installed copy run outside one) this is build/images in the cache, never ./images.
    """
    checkout = find_checkout()
    return checkout / "images" if checkout is not None else build_dir() / "images"


def build_dir() -> Path:
    """Run outputs (executed notebooks, plots, benchmarks, slides): build/ of the checkout, git-ignored.

    An installed (non-editable) copy never writes into the current folder: it uses $SFT_LESSONS_CACHE/build.
    """
    root = checkout_root()
    path = root / "build" if root is not None else cache_root() / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path
