"""The harness on a scripted backend: results file, resume, refusal to mix runs, torn
lines, the CLI, the summary, the plots and `reason eval compare`."""

import json
import re

import pytest
from click.testing import CliRunner
from scripted import ScriptedBackend

from reason import Config, Runtime, get_registry
from reason.errors import UsageError
from reason.eval.results import PLOT, RESULTS, SUMMARY, ResultsFile, load_run
from reason.eval.run import EvalRun


def adder(request, index):
    """Even samples add correctly, odd ones are off by one."""
    a, b = map(int, re.findall(r"What is (\d+) plus (\d+)\?", request.prompt)[-1])
    value = a + b + (index % 2)
    return f"First add them.\n\nThe answer is \\boxed{{{value}}}."


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "sums.jsonl"
    rows = [{"question": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_run(path, out, backend_calls=None, resume=False, limit=None, **config):
    config = Config(**{"n": 2, "verifier": "confidence", "max_tokens": 64, **config})
    dataset = get_registry().create("dataset", f"jsonl:{path}", config)
    return EvalRun(dataset_spec=f"jsonl:{path}", dataset=dataset, config=config, out=out, limit=limit, resume=resume)


def execute(run, backend=None):
    backend = backend or ScriptedBackend(adder)
    todo = run.prepare()
    with Runtime(run.config, backend=backend) as runtime:
        run.run(runtime, todo)
    return run.summarize(), backend, todo


def lines(out):
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


def test_run_writes_graded_results_and_summary(problems, tmp_path):
    out = tmp_path / "run"
    summary, _, _ = execute(make_run(problems, out))
    records = lines(out)
    assert sorted(r["task_id"] for r in records) == [f"sums/{i}" for i in range(6)]
    for record in records:
        assert record["question"].startswith("What is") and record["reference"]
        assert [c["correct"] for c in record["candidates"]] == [True, False]
        assert record["candidates"][0]["answer"] == record["reference"]
        assert record["candidates"][0]["tokens"] > 0 and record["candidates"][0]["text"]
        assert record["usage"]["completion_tokens"] > 0
        assert record["correct"] == (record["answer"] == record["reference"])
    # one right and one wrong sample per problem: exactly half at n=1
    assert summary["maj@1"] == summary["naive@1"] == summary["weighted@1"] == 0.5
    # at n=2 majority ties go to the first sample (the right one); naive follows the scores
    assert summary["maj@2"] == 1.0
    expected_naive = sum(
        (r["candidates"][0]["score"] >= r["candidates"][1]["score"]) for r in records
    ) / len(records)
    assert summary["naive@2"] == pytest.approx(expected_naive)
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 6)
    assert json.loads((out / SUMMARY).read_text())["maj@2"] == 1.0
    assert summary["problems"] == 6 and summary["search"] == "best-of-n"


def test_resume_skips_finished_problems_and_never_duplicates(problems, tmp_path):
    out = tmp_path / "run"
    execute(make_run(problems, out, limit=3))
    assert len(lines(out)) == 3
    with pytest.raises(UsageError, match="already holds results for 3 problem.*--resume"):
        make_run(problems, out).prepare()
    _, backend, todo = execute(make_run(problems, out, resume=True))
    assert [t.id for _, t in todo] == ["sums/3", "sums/4", "sums/5"]
    solved = {re.findall(r"What is (\d+) plus", r.prompt)[-1] for call in backend.calls for r in call}
    assert solved == {"3", "4", "5"}
    ids = [r["task_id"] for r in lines(out)]
    assert sorted(ids) == [f"sums/{i}" for i in range(6)] and len(ids) == 6
    # resuming a finished run solves nothing
    _, backend, todo = execute(make_run(problems, out, resume=True))
    assert todo == [] and backend.calls == []


def test_refuses_a_directory_of_a_different_run(problems, tmp_path):
    out = tmp_path / "run"
    execute(make_run(problems, out, limit=2))
    for kwargs in ({}, {"resume": True}):
        with pytest.raises(UsageError, match=r"different run \(n: 2 -> 4") as err:
            make_run(problems, out, n=4, **kwargs).prepare()
        assert "--out" in str(err.value)
    with pytest.raises(UsageError, match="search: 'best-of-n' -> 'self-consistency'"):
        make_run(problems, out, search="self-consistency", resume=True).prepare()
    # data_dir does not change results: a resume may name another copy of the data
    make_run(problems, out, resume=True, options={"data_dir": str(tmp_path)}).prepare()


def test_a_run_written_before_the_search_fields_moved_still_resumes(problems, tmp_path):
    """run.json of earlier releases holds beam_width, max_steps and weighted as Config
    fields; at their defaults they are what this release runs, set they are its options."""
    out = tmp_path / "run"
    execute(make_run(problems, out, limit=2))
    run = json.loads((out / "run.json").read_text())
    run["identity"]["config"].update(beam_width=4, max_steps=40, weighted=False)
    (out / "run.json").write_text(json.dumps(run))
    _, _, todo = execute(make_run(problems, out, limit=3, resume=True))
    assert [t.id for _, t in todo] == ["sums/2"]
    run["identity"]["config"].update(weighted=True)
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(UsageError, match=r"different run \(options.weighted: True -> None"):
        make_run(problems, out, resume=True).prepare()


def test_a_torn_last_line_is_dropped_and_the_problem_redone(problems, tmp_path):
    out = tmp_path / "run"
    execute(make_run(problems, out, limit=2))
    with open(out / RESULTS, "a") as fh:
        fh.write('{"task_id": "sums/2", "question": "What is 2 pl')  # killed mid-write
    torn = (out / RESULTS).read_text()
    # a reader (compare, a run that is not resuming) skips the torn line and leaves the file alone
    assert [r["task_id"] for r in ResultsFile(out / RESULTS).read()] == ["sums/0", "sums/1"]
    assert (out / RESULTS).read_text() == torn
    with pytest.raises(UsageError, match="--resume"):
        make_run(problems, out, limit=4).prepare()
    assert (out / RESULTS).read_text() == torn
    # the resuming run cuts it off before appending
    assert [r["task_id"] for r in ResultsFile(out / RESULTS).read(repair=True)] == ["sums/0", "sums/1"]
    assert (out / RESULTS).read_text().endswith("\n")
    _, _, todo = execute(make_run(problems, out, limit=4, resume=True))
    assert [t.id for _, t in todo] == ["sums/2", "sums/3"]
    assert [r["task_id"] for r in lines(out)] == ["sums/0", "sums/1", "sums/2", "sums/3"]


def test_save_tree_and_offset(problems, tmp_path):
    out = tmp_path / "run"
    run = make_run(problems, out, limit=2)
    run.offset, run.save_tree = 3, True
    execute(run)
    records = lines(out)
    assert [r["task_id"] for r in records] == ["sums/3", "sums/4"]
    assert [r["index"] for r in records] == [3, 4]
    assert records[0]["tree"]["num_nodes"] == 3  # root + 2 samples


# --- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def scripted_backend():
    registry = get_registry()
    registry.add("backend", "scripted-adder", lambda config, arg: ScriptedBackend(adder, config), plugin="tests")
    yield "scripted-adder"
    registry.remove("backend", "scripted-adder")


def invoke(*args):
    from reason.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def test_cli_eval_and_compare(problems, tmp_path, scripted_backend):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["eval", "--dataset", str(problems), "--backend", scripted_backend, "--max-tokens", "64"]
    result = invoke(*common, "--n", "2", "--out", str(a))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "maj" in result.output and "@2" in result.output and "strategy's choice" in result.output
    assert "16 problems in flight; --concurrency sets it" in result.output  # an engine that does not say its rows
    assert (a / PLOT).stat().st_size > 1000 and (a / SUMMARY).exists()
    result = invoke(*common, "--n", "4", "--search", "self-consistency", "--out", str(b), "--limit", "3", "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads(result.output)
    assert summary["problems"] == 3 and summary["n"] == 4 and "maj@4" in summary
    # same options again without --resume: refused, with the fix in the message
    again = invoke(*common, "--n", "4", "--search", "self-consistency", "--out", str(b), "--limit", "3")
    assert isinstance(again.exception, UsageError) and "--resume" in str(again.exception)

    plot = tmp_path / "cmp.png"
    result = invoke("eval", "compare", str(a), str(b), "--plot", str(plot))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert " a " in result.output and " b " in result.output
    assert "best-of-n" in result.output and "self-consistency" in result.output
    assert plot.stat().st_size > 1000
    assert load_run(a)["problems"] == 6


def test_compare_common_restricts_every_run_to_shared_problems(problems, tmp_path, scripted_backend):
    a, b = tmp_path / "a", tmp_path / "b"
    execute(make_run(problems, a, limit=5))
    execute(make_run(problems, b, limit=2, search="self-consistency"))
    result = invoke("eval", "compare", str(a), str(b), "--common", "--no-plot", "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert [s["problems"] for s in json.loads(result.output)] == [2, 2]
    result = invoke("eval", "compare", str(a), str(b), "--no-plot", "--json")
    assert [s["problems"] for s in json.loads(result.output)] == [5, 2]


def test_compare_recomputes_an_interrupted_run_without_summary(problems, tmp_path):
    out = tmp_path / "run"
    execute(make_run(problems, out, limit=2))
    (out / SUMMARY).unlink()
    summary = load_run(out)
    assert summary["problems"] == 2 and summary["maj@2"] == 1.0 and summary["dataset"].startswith("jsonl:")
    with pytest.raises(UsageError, match="no evaluation run"):
        load_run(tmp_path / "empty")


def test_cli_errors(tmp_path):
    result = invoke("eval", "--limit", "2")
    assert isinstance(result.exception, UsageError) and "--dataset" in str(result.exception)
    result = invoke("eval", "--dataset", "nosuch")
    assert isinstance(result.exception, UsageError) and "gsm8k" in str(result.exception)
    result = invoke("eval", "--dataset", "gsm8k", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert isinstance(result.exception, UsageError) and "--data-dir" in str(result.exception)


# --- what the search sees, and how the report is labelled ---------------------------------------


def test_the_search_never_sees_the_reference_or_grading_only_metadata(tmp_path):
    from reason import Score, Verifier

    seen = []

    class Recording(Verifier):
        def score(self, requests):
            seen.extend(r.task for r in requests)
            return [Score(step_scores=[0.5] * len(r.steps)) for r in requests]

    path = tmp_path / "graded.jsonl"
    rows = [{"question": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1), "solution": "worked: add them",
             "test": "hidden", "canonical_solution": "hidden too", "topic": "sums"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry = get_registry()
    registry.add("verifier", "recording", Recording, plugin="tests")
    try:
        out = tmp_path / "run"
        summary, _, _ = execute(make_run(path, out, verifier="recording"))
    finally:
        registry.remove("verifier", "recording")
    assert len(seen) == 6  # 3 problems x 2 samples
    for task in seen:
        assert task.reference is None
        assert task.metadata == {"topic": "sums"}  # what a user could see; nothing that grades
    records = lines(out)
    assert all(r["reference"] for r in records)  # grading still had the full task
    assert [c["correct"] for c in records[0]["candidates"]] == [True, False]
    assert summary["accuracy"] == 1.0  # both candidates score 0.5: the first (right) one is kept


def render(renderable) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(renderable)
    return console.export_text()


CODE_SUMMARY = {
    "dataset": "humaneval", "search": "best-of-n", "verifier": "sandbox", "n": 4, "problems": 20, "budgets": [1, 2, 4],
    "accuracy": 0.75, "naive@1": 0.7, "naive@2": 0.74, "naive@4": 0.75, "pass@1": 0.7, "pass@2": 0.82, "pass@4": 0.9,
    "tokens@1": 100, "tokens@2": 200, "tokens@4": 400, "tokens_per_problem": 400, "seconds_per_problem": 1.0,
    "latency_per_problem": 2.0, "unverified": 2, "dir": "runs/he-bon4",
}


def test_the_summary_table_names_the_choice_the_rules_and_the_oracle_ceiling():
    from reason.eval.report import summary_table

    text = render(summary_table(CODE_SUMMARY))
    assert "best-of-n's choice" in text and "75.0" in text
    assert "naive@n (top verifier score)" in text
    assert "pass@n (oracle ceiling)" in text and "pass@n is an oracle upper bound" in text
    assert "unverified: 2 of 20 problems had no public tests" in text
    math_text = render(summary_table({**{k: v for k, v in CODE_SUMMARY.items() if not k.startswith(("pass", "unverified"))},
                                      "maj@1": 0.5, "maj@2": 0.6, "maj@4": 0.7}))
    assert "maj@n (majority vote)" in math_text and "oracle" not in math_text and "unverified" not in math_text


def test_compare_labels_pass_at_n_as_the_oracle():
    from reason.eval.report import compare_table

    text = render(compare_table([CODE_SUMMARY]))
    assert "pass@N % (oracle)" in text and "choice %" in text and "pass@1 % (1 sample)" in text
    assert "unverified" in text and "oracle upper bound" in text


def test_the_plot_draws_pass_at_n_as_a_dashed_ceiling(tmp_path):
    from reason.eval.plots import _draw, _pyplot, plot_run

    plt = _pyplot()
    fig, ax = plt.subplots()
    try:
        _draw(ax, CODE_SUMMARY, "tab:blue")
        lines_by_label = {line.get_label(): line for line in ax.get_lines()}
        ceiling = lines_by_label["pass@n (oracle ceiling)"]
        assert ceiling.get_linestyle() == "--" and ceiling.get_marker() in ("None", "none", "")
        assert list(ceiling.get_ydata()) == [70.0, 82.0, 90.0]
        others = [line for label, line in lines_by_label.items() if "oracle" not in label]
        assert others and all(line.get_linestyle() != "--" for line in others)
        labels = ax.get_legend_handles_labels()[1]
        assert "best-of-n's choice" in labels
    finally:
        plt.close(fig)
    assert plot_run(CODE_SUMMARY, tmp_path / "p.png").stat().st_size > 1000


def test_a_search_that_ignores_n_is_not_labelled_with_it(problems, tmp_path, monkeypatch, scripted_backend):
    monkeypatch.chdir(tmp_path)
    common = ["eval", "--dataset", str(problems), "--backend", scripted_backend, "--limit", "2", "--no-plot"]
    result = invoke(*common, "--search", "greedy")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "runs" / f"{problems.stem}-greedy" / SUMMARY).exists()
    assert "n=4" not in result.output and "greedy n=1" in result.output  # the summary: one candidate
    result = invoke(*common, "--search", "best-of-n", "--n", "2")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "runs" / f"{problems.stem}-best-of-n-n2" / SUMMARY).exists()
    assert "best-of-n n=2" in result.output
