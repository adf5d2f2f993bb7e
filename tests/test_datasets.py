"""Datasets: the real files load with stable ids and references; the data directory is
found (or a clear error says where it looked); any JSONL works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reason import Config, Dataset, get_registry
from reason.errors import UsageError
from reason.plugins.datasets import data_dir_candidates

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def create(spec, **options):
    return get_registry().create("dataset", spec, Config(options=options))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("REASON_DATA_DIR", raising=False)


@pytest.mark.parametrize(
    "name, count, first_id, first_reference",
    [
        ("gsm8k", 1319, "gsm8k/0", "18"),
        ("gsm8k-train", 7473, "gsm8k-train/0", "72"),
        ("math500", 500, "math500/0", r"\left( 3, \frac{\pi}{2} \right)"),
        ("multiarith", 600, "multiarith/0", "39"),
        ("humaneval", 164, "HumanEval/0", None),
    ],
)
def test_builtin_datasets_load_the_real_files(name, count, first_id, first_reference):
    dataset = create(name)
    assert isinstance(dataset, Dataset)
    tasks = list(dataset.load())
    assert len(tasks) == count
    assert tasks[0].id == first_id
    assert len({t.id for t in tasks}) == count  # ids are unique
    assert [t.id for t in create(name).load()] == [t.id for t in tasks]  # and stable
    assert all(t.question.strip() for t in tasks)
    if first_reference is not None:
        assert tasks[0].reference == first_reference
        assert all(t.reference for t in tasks)


def test_gsm8k_reference_and_metadata():
    task = next(iter(create("gsm8k").load()))
    assert task.question.startswith("Janet")
    assert task.metadata["solution"].endswith("#### 18")
    assert task.kind == "math"
    big = [t for t in create("gsm8k").load() if t.id == "gsm8k/7"]
    assert "," not in big[0].reference


def test_humaneval_is_code_with_prompt_test_entry_point():
    tasks = list(create("humaneval").load())
    task = tasks[0]
    assert task.kind == "code"
    assert task.question == task.metadata["prompt"]
    assert task.metadata["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in task.metadata["test"]
    assert tasks[163].id == "HumanEval/163"


def test_humaneval_tasks_carry_the_prompt_examples_as_public_tests():
    tasks = list(create("humaneval").load())
    assert tasks[0].metadata["public_tests"] == [
        "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False",
        "assert has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True",
    ]
    for task in tasks:  # public tests are the prompt's, never HumanEval's hidden check
        assert all("candidate(" not in test and "def check" not in test for test in task.metadata["public_tests"])
    assert sum(1 for t in tasks if t.metadata["public_tests"]) == 156
    assert tasks[38].metadata["public_tests"] == []  # decode_cyclic shows no example


def test_humaneval_grades_with_the_hidden_tests_unless_told_otherwise():
    from reason.eval.grading import CodeGrader
    from reason.plugins.verifiers.sandbox import HiddenTestGrader

    assert isinstance(create("humaneval").grader, HiddenTestGrader)  # built lazily, no Docker yet
    chosen = create("humaneval", grading_verifier="sandbox").grader
    assert isinstance(chosen, CodeGrader) and chosen.spec == "sandbox"


def test_math500_keeps_subject_level_and_unique_id():
    task = next(iter(create("math500").load()))
    assert task.metadata["unique_id"] == "test/precalculus/807.json"
    assert task.metadata["level"] == 2


def test_data_dir_option_env_and_defaults(monkeypatch, tmp_path):
    (tmp_path / "multiarith").mkdir()
    (tmp_path / "multiarith" / "test.jsonl").write_text('{"input": "1+1?", "target": 2}\n')
    tasks = list(create("multiarith", data_dir=str(tmp_path)).load())
    assert [(t.id, t.reference) for t in tasks] == [("multiarith/0", "2")]
    monkeypatch.setenv("REASON_DATA_DIR", str(tmp_path))
    assert len(list(create("multiarith").load())) == 1
    monkeypatch.delenv("REASON_DATA_DIR")
    # from a directory next to shared/: ../shared/data relative to the current directory
    work = tmp_path / "w"
    (work / "shared").mkdir(parents=True)
    os.symlink(tmp_path, work / "shared" / "data")
    (work / "proj").mkdir()
    monkeypatch.chdir(work / "proj")
    candidates = data_dir_candidates()
    assert candidates[0][0].resolve() == (work / "shared" / "data").resolve()
    assert len(list(create("multiarith").load())) == 1


def test_repository_default_works_from_any_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ../shared/data here: the repository's is used
    assert len(list(create("multiarith").load())) == 600


def test_missing_data_names_the_path_and_the_option(tmp_path):
    with pytest.raises(UsageError) as err:
        list(create("gsm8k", data_dir=str(tmp_path / "nowhere")).load())
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "gsm8k" / "test.jsonl") in message
    assert "--data-dir" in message and "REASON_DATA_DIR" in message


# --- any JSONL ------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_explicit_fields(tmp_path):
    path = write_jsonl(tmp_path / "qs.jsonl", [{"q": "2+2?", "a": 4, "tag": "x"}, {"q": "3*3?", "a": "9"}])
    dataset = create(f"jsonl:{path}", question_field="q", answer_field="a")
    tasks = list(dataset.load())
    assert [(t.id, t.question, t.reference) for t in tasks] == [("qs/0", "2+2?", "4"), ("qs/1", "3*3?", "9")]
    assert tasks[0].metadata == {"tag": "x"}
    assert dataset.is_correct(tasks[0], "4.0") and not dataset.is_correct(tasks[0], "5")


def test_jsonl_guesses_usual_fields_and_reduces_worked_solutions(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "p1", "problem": "Half of one?", "answer": "It is \\boxed{\\frac{1}{2}}."},
            {"id": "p2", "problem": "Ten times ten?", "answer": "10*10=100\n#### 100"},
        ],
    )
    dataset = create(f"jsonl:{path}", id_field="id")
    tasks = list(dataset.load())
    assert [t.id for t in tasks] == ["p1", "p2"]
    assert [t.reference for t in tasks] == ["\\frac{1}{2}", "100"]
    assert dataset.is_correct(tasks[0], "0.5")


def test_jsonl_errors_name_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hi", "gold": 1}])
    with pytest.raises(UsageError, match="--question-field"):
        list(create(f"jsonl:{path}").load())
    with pytest.raises(UsageError, match="no field 'nope'.*--answer-field"):
        list(create(f"jsonl:{path}", question_field="text", answer_field="nope").load())
    with pytest.raises(UsageError, match="does not exist"):
        list(create(f"jsonl:{tmp_path / 'missing.jsonl'}").load())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a"}\nnot json\n')
    with pytest.raises(UsageError, match="bad.jsonl:2"):
        list(create(f"jsonl:{bad}").load())


def test_dataset_plugins_import_nothing_heavy():
    code = (
        "import sys, reason; r = reason.get_registry(); r.create('dataset', 'gsm8k', reason.Config());"
        "import reason.eval.run, reason.eval.cli, reason.eval.metrics, reason.eval.results, reason.eval.report;"
        "print(sorted(m for m in ('torch', 'sympy', 'docker', 'matplotlib', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the user cache and the hub -------------------------------------------------------------


@pytest.fixture
def nothing_local(monkeypatch, tmp_path):
    """No ../shared/data anywhere (an installed package, run from elsewhere), and a user
    cache of the test's own."""
    from reason.plugins import datasets

    monkeypatch.setattr(datasets, "_repository_root", lambda: None)
    monkeypatch.delenv("REASON_DATA_DIR", raising=False)
    monkeypatch.setenv("REASON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache" / "data"


def test_a_dataset_in_the_user_cache_is_found(nothing_local):
    (nothing_local / "multiarith").mkdir(parents=True)
    (nothing_local / "multiarith" / "test.jsonl").write_text('{"input": "1+1?", "target": 2}\n')
    assert [t.reference for t in create("multiarith").load()] == ["2"]


def test_a_missing_dataset_comes_from_the_hub_once_into_the_user_cache(nothing_local, tmp_path, monkeypatch):
    """The real ``datasets`` library, on a local JSON file standing in for the hub."""
    datasets = pytest.importorskip("datasets")
    from reason.plugins.datasets import GSM8K, HubSource

    source = write_jsonl(tmp_path / "gsm8k-hub.json", [{"question": "2+2?", "answer": "2+2=4\n#### 4"}] * 3)
    monkeypatch.setattr(GSM8K, "hub", HubSource("json", "train", kwargs={"data_files": str(source)}))
    tasks = list(create("gsm8k").load())
    assert [(t.id, t.reference) for t in tasks] == [("gsm8k/0", "4"), ("gsm8k/1", "4"), ("gsm8k/2", "4")]
    cached = nothing_local / "gsm8k" / "test.jsonl"
    assert cached.is_file() and len(cached.read_text().splitlines()) == 3

    def no_hub(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    assert len(list(create("gsm8k").load())) == 3  # from the cache now


def test_offline_the_hub_miss_is_one_line_saying_where_to_put_the_file(nothing_local, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UsageError) as err:
        list(create("math500").load())
    message = str(err.value)
    assert "\n" not in message and "openai" not in message
    assert "HuggingFaceH4/MATH-500" in message and f"Put the file at {nothing_local / 'math500' / 'test.jsonl'}" in message
    assert not (nothing_local / "math500" / "test.jsonl").exists()  # nothing half-written


def test_a_folder_named_on_purpose_is_not_replaced_by_the_hub(tmp_path):
    with pytest.raises(UsageError, match="data file not found"):
        list(create("gsm8k", data_dir=str(tmp_path / "nowhere")).load())
