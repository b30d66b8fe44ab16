"""Where the course's folders are: notebooks/, images/, build/."""

from __future__ import annotations

from pathlib import Path


def project_root() -> Path:
    """The checkout root: the folder above the package if it has notebooks/, else the nearest parent with one."""
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd()


def notebooks_dir() -> Path:
    """The committed notebooks."""
    return project_root() / "notebooks"


def images_dir() -> Path:
    """Generated figures that notebooks and the README show."""
    path = project_root() / "images"
    path.mkdir(exist_ok=True)
    return path


def build_dir() -> Path:
    """Run outputs: executed notebooks, benchmarks, slides (git-ignored)."""
    path = project_root() / "build"
    path.mkdir(exist_ok=True)
    return path
