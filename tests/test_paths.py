from sft_lessons import paths


def test_project_root_has_notebooks():
    root = paths.project_root()
    assert (root / "notebooks").is_dir() and (root / "pyproject.toml").is_file()
    assert paths.images_dir().is_dir()
