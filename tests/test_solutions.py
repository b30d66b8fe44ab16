import importlib
import inspect

import pytest

from sft_lessons.course import exercises

# Solutions that do a job the package already does carry the package function's name and argument order.
PACKAGE_TWINS = {
    "build_icl_prompt": "sft_lessons.icl",
    "double_dequantize": "sft_lessons.quant",
    "linear_pi_frequencies": "sft_lessons.rope",
    "alibi_slopes": "sft_lessons.rope",
}


def test_solutions_module_imports_without_side_effects():
    mod = importlib.import_module("sft_lessons.course.solutions")
    assert mod.__doc__


def test_every_public_solution_belongs_to_an_exercise():
    mod = importlib.import_module("sft_lessons.course.solutions")
    public = {
        name
        for name, obj in vars(mod).items()
        if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and not name.startswith("_")
    }
    assert public == {ex.solution for ex in exercises.EXERCISES.values()}


@pytest.mark.parametrize("name, module", sorted(PACKAGE_TWINS.items()))
def test_solutions_share_the_package_functions_name_and_arguments(name, module):
    ours = getattr(importlib.import_module("sft_lessons.course.solutions"), name)
    theirs = getattr(importlib.import_module(module), name)
    assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
