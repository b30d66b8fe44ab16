import importlib


def test_solutions_module_imports_without_side_effects():
    mod = importlib.import_module("sft_lessons.course.solutions")
    assert mod.__doc__
