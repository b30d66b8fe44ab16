import pytest

from sft_lessons.course import exercises


def test_registry_and_check(monkeypatch):
    monkeypatch.setattr(exercises, "EXERCISES", {})

    @exercises.exercise("99.1", "add one", "def add_one(x):\n    # TODO\n    ...")
    def check_add_one(fn):
        exercises.expect_equal("add_one(1)", fn(1), 2)

    assert exercises.check("99.1", lambda x: x + 1) == "correct"
    with pytest.raises(exercises.ExerciseFailed, match="expected 2, got 1"):
        exercises.check("99.1", lambda x: x)
    assert exercises.EXERCISES["99.1"].chapter == "99"
    with pytest.raises(KeyError, match="99.1"):
        exercises.check("99.2", None)


def test_expect_close_reports_shapes():
    with pytest.raises(exercises.ExerciseFailed, match=r"expected shape \(2,\), got \(3,\)"):
        exercises.expect_close("v", [1.0, 2.0, 3.0], [1.0, 2.0])
    exercises.expect_close("v", [1.0, 2.0], [1.0, 2.0 + 1e-7])


def test_every_registered_exercise_has_a_stub_and_a_solution():
    import sft_lessons.course.solutions  # noqa: F401  (importable)

    for ex in exercises.EXERCISES.values():
        assert "TODO" in ex.stub, ex.key


CHAPTER_04 = [("04.1", "nf4_dequantize_answer"), ("04.2", "lora_trainable_params")]


@pytest.mark.parametrize("key, answer", CHAPTER_04)
def test_chapter_04_solutions_pass_and_stubs_fail(key, answer):
    import sft_lessons.course.solutions as solutions

    assert exercises.check(key, getattr(solutions, answer)).startswith("correct")
    namespace = {}
    exec(exercises.EXERCISES[key].stub, namespace)
    with pytest.raises(NotImplementedError):
        exercises.check(key, namespace[answer])
