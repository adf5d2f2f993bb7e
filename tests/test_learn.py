"""`reason learn`'s labels on a scripted backend: a trajectory that reaches the reference is
labelled right, one that does not, wrong; Monte-Carlo labels from a shared tree; steps;
the SFT export; the refusal of test splits; the verifier-quality metrics."""

import gzip
import hashlib
import json
import re

import pytest
from click.testing import CliRunner
from scripted import ScriptedBackend

from reason import Config, Runtime, get_registry
from reason.errors import UsageError
from reason.eval.metrics import auroc, average_precision, score_quality
from reason.eval.run import EvalRun
from reason.plugins.learn.extract import file_name
from reason.plugins.learn.labels import record_trajectories, sft_records, split_paragraphs


def adder(request, index):
    """Even samples add correctly (in two steps), odd ones are off by one."""
    a, b = map(int, re.findall(r"What is (\d+) plus (\d+)\?", request.prompt)[-1])
    return f"Add {a} and {b}.\n\nThe answer is \\boxed{{{a + b + index % 2}}}."


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "sums.jsonl"
    rows = [{"question": f"What is {i} plus {i + 1}?", "answer": str(2 * i + 1)} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rollouts(path, out, script=adder, offset=0, limit=None, **config):
    config = Config().replace(**{"n": 2, "verifier": "none", "search": "self-consistency", "max_tokens": 64, **config})
    dataset = get_registry().create("dataset", f"jsonl:{path}", config)
    run = EvalRun(dataset_spec=f"jsonl:{path}", dataset=dataset, config=config, out=out, offset=offset, limit=limit, save_tree=True)
    with Runtime(config, backend=ScriptedBackend(script)) as runtime:
        return run.run(runtime, run.prepare())


def test_a_trajectory_that_reaches_the_reference_is_right_and_one_that_does_not_is_wrong(problems, tmp_path):
    records = rollouts(problems, tmp_path / "run")
    trajectories = [t for r in records for t in record_trajectories(r)]
    assert len(trajectories) == 6
    for t in trajectories:
        expected = t["candidate"] % 2 == 0  # the scripted even samples add correctly
        assert t["correct"] is expected
        assert t["labels"]["outcome"] == [int(expected)] * len(t["steps"])
        assert t["labels"]["mc"] == [float(expected)] * len(t["steps"])  # independent samples: mc == outcome
        assert "".join(t["steps"]).endswith("}.")
        assert len(t["steps"]) == 2  # the sample is one tree node, cut at its blank line
        assert t["token_ids"] and t["prompt"].endswith("<assistant>")


def test_monte_carlo_labels_count_the_candidates_that_share_a_node(problems, tmp_path):
    """Beam search shares its first steps between candidates: a shared step's estimate is
    the share of right candidates below it."""
    def two_steps(request, index):
        a, b = map(int, re.findall(r"What is (\d+) plus (\d+)\?", request.prompt)[-1])
        if "Add" not in request.prompt:
            return f"Add {a} and {b}.\n\n"
        return f"The answer is \\boxed{{{a + b + index % 2}}}."

    records = rollouts(problems, tmp_path / "run", script=two_steps, search="beam", n=2, beam_width=2,
                       verifier="confidence", max_steps=3)
    record = records[0]
    trajectories = record_trajectories(record)
    right = [t for t in trajectories if t["correct"]]
    wrong = [t for t in trajectories if not t["correct"]]
    assert right and wrong
    for t in trajectories:
        assert t["labels"]["outcome"] == [int(t["correct"])] * len(t["steps"])
    # N=2, M=2 keeps one first step and expands it twice: both candidates share that node,
    # so its estimate is the share of right candidates below it
    assert len({t["nodes"][0] for t in trajectories}) == 1
    assert all(t["labels"]["mc"][0] == 0.5 for t in trajectories)
    # the last step is each candidate's own: its estimate is its outcome
    assert all(t["labels"]["mc"][-1] == float(t["correct"]) for t in trajectories)


def test_steps_join_back_to_the_text():
    text = "One.\n\nTwo.\n \nThree."
    assert split_paragraphs(text) == ["One.\n\n", "Two.\n \n", "Three."]
    assert "".join(split_paragraphs("a\n\n")) == "a\n\n"
    assert split_paragraphs("") == []


def test_sft_export_keeps_only_right_trajectories_in_chat_form(problems, tmp_path):
    records = rollouts(problems, tmp_path / "run")
    trajectories = [t for r in records for t in record_trajectories(r)]
    sft = list(sft_records(trajectories, system_prompt="Be brief."))
    assert len(sft) == 3
    for item in sft:
        roles = [m["role"] for m in item["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert item["messages"][2]["content"].startswith("Add")


def test_a_record_without_a_tree_is_refused_with_the_fix(problems, tmp_path):
    record = rollouts(problems, tmp_path / "run")[0]
    del record["tree"]
    with pytest.raises(UsageError, match="--save-tree"):
        record_trajectories(record)


@pytest.fixture
def scripted_backend():
    registry = get_registry()
    registry.add("backend", "scripted-adder", lambda config, arg: ScriptedBackend(adder, config), plugin="tests")
    yield "scripted-adder"
    registry.remove("backend", "scripted-adder")


def invoke(*args):
    from reason.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def test_cli_rollouts_labels_and_export(problems, tmp_path, scripted_backend):
    out = tmp_path / "learn"
    result = invoke("learn", "rollouts", "--dataset", str(problems), "--backend", scripted_backend, "--n", "2",
                    "--search", "self-consistency", "--verifier", "none", "--max-tokens", "64", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output + repr(result.exception)
    trajectories = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 6 and sum(t["correct"] for t in trajectories) == 3
    stats = json.loads((out / "trajectories.json").read_text())
    assert stats["problems_with_mixed_outcomes"] == 3 and len(stats["sha256"]) == 64
    sft = tmp_path / "sft.jsonl"
    result = invoke("learn", "export-sft", str(out), "--out", str(sft))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(sft.read_text().splitlines()) == 3


@pytest.mark.parametrize("dataset", ["gsm8k", "multiarith", "math500", "humaneval"])
def test_rollouts_refuse_test_splits(dataset, tmp_path):
    result = invoke("learn", "rollouts", "--dataset", dataset, "--out", str(tmp_path / "x"))
    assert isinstance(result.exception, UsageError)
    assert "test split" in str(result.exception) and "gsm8k-train" in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_learn_commands_name_a_missing_run():
    result = invoke("learn", "features", "/nonexistent/run")
    assert isinstance(result.exception, UsageError) and "reason learn rollouts" in str(result.exception)


@pytest.mark.parametrize("command", ["features", "train"])
def test_a_problem_whose_candidate_appears_twice_is_refused_before_any_work(problems, tmp_path, command):
    """Two rollout runs that share a problem, joined into one file: each command that reads
    features per candidate names the problem and the fix instead of mixing their states."""
    out = tmp_path / "run"
    rollouts(problems, out)
    assert invoke("learn", "labels", str(out)).exit_code == 0
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    (out / "trajectories.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")
    task = json.loads(lines[0])["task_id"]
    result = invoke("learn", command, str(out), *(["--out", str(tmp_path / "head")] if command == "train" else []))
    assert isinstance(result.exception, UsageError), result.output
    assert f"candidate 0 of problem {task} twice" in str(result.exception) and "reason learn join" in str(result.exception)
    assert not (out / "features").exists() and not (tmp_path / "head").exists()


def test_join_keeps_each_problem_from_the_first_run_and_links_its_features(problems, tmp_path):
    """Two runs that share a problem (the second started at a later offset before the first
    finished): joined, the shared problem comes from the first run, with its features."""
    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "all"
    rollouts(problems, first, offset=0, limit=2)
    rollouts(problems, second, offset=1, seed=5)
    for run in (first, second):
        assert invoke("learn", "labels", str(run)).exit_code == 0

    def tasks(run):
        return sorted({json.loads(line)["task_id"] for line in (run / "trajectories.jsonl").read_text().splitlines()})

    first_tasks, second_tasks = tasks(first), tasks(second)
    shared, new = second_tasks[0], second_tasks[1]
    assert shared in first_tasks and new not in first_tasks
    for run, held in ((first, first_tasks), (second, second_tasks)):  # a feature file per problem, told apart
        (run / "features" / "L12").mkdir(parents=True)
        for task in held:
            (run / "features" / "L12" / file_name(task)).write_text(f"{run.name} {task}")
    packed = second / "trajectories.jsonl"  # as committed sets ship: gzipped
    (second / "trajectories.jsonl.gz").write_bytes(gzip.compress(packed.read_bytes()))
    packed.unlink()

    result = invoke("learn", "join", str(first), str(second), "--out", str(out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"1 problems an earlier run holds, left out ({shared})" in result.output
    joined = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    from_first = [json.loads(line) for line in (first / "trajectories.jsonl").read_text().splitlines()]
    assert [t for t in joined if t["task_id"] == shared] == [t for t in from_first if t["task_id"] == shared]
    assert len({t["task_id"] for t in joined}) == 3 and len(joined) == 6
    stats = json.loads((out / "trajectories.json").read_text())
    assert stats["problems"] == 3 and stats["sha256"] == hashlib.sha256((out / "trajectories.jsonl").read_bytes()).hexdigest()
    features = out / "features" / "L12"
    assert (features / file_name(shared)).read_text() == f"first {shared}"
    assert (features / file_name(new)).read_text() == f"second {new}"
    run = json.loads((out / "run.json").read_text())
    assert [j["offset"] for j in run["joined"]] == [0, 1]
    assert run["identity"] == json.loads((first / "run.json").read_text())["identity"]


def test_join_refuses_runs_of_different_policies_and_a_directory_that_holds_rollouts(problems, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for run in (first, second):
        rollouts(problems, run, limit=1)
        assert invoke("learn", "labels", str(run)).exit_code == 0
    meta = json.loads((second / "run.json").read_text())
    meta["identity"]["config"]["model"] = "smollm2"
    (second / "run.json").write_text(json.dumps(meta))
    result = invoke("learn", "join", str(first), str(second), "--out", str(tmp_path / "all"))
    assert isinstance(result.exception, UsageError) and "different policies" in str(result.exception)
    assert "smollm2" in str(result.exception) and not (tmp_path / "all").exists()
    result = invoke("learn", "join", str(first), "--out", str(second))
    assert isinstance(result.exception, UsageError) and "already holds rollouts" in str(result.exception)


@pytest.mark.parametrize(
    ("flag", "value", "names"), [("--pooling", "mean,max", "max given; choose among mean, mean+last, mean+step"),
                                 ("--kinds", "forest", "forest given; choose among linear, encoder")]
)
def test_train_names_an_unknown_head_kind_or_pooling_before_reading_anything(flag, value, names, tmp_path):
    result = invoke("learn", "train", "/nonexistent/run", flag, value, "--out", tmp_path / "head")
    assert isinstance(result.exception, UsageError) and f"{flag}: {names}" in str(result.exception)
    assert not list(tmp_path.iterdir())


def test_train_names_a_bad_weight_decay_before_reading_anything(tmp_path):
    result = invoke("learn", "train", "/nonexistent/run", "--weight-decay", "0.01,lots", "--out", tmp_path / "head")
    assert isinstance(result.exception, UsageError) and "--weight-decay takes penalties" in str(result.exception)
    assert "'0.01,lots'" in str(result.exception)


def test_linear_heads_are_tried_on_each_layer_and_all_together_at_each_penalty():
    from reason.plugins.learn.train import default_candidates

    names = [c.name for c in default_candidates((8, 12), {"linear"}, ["mean"], False, [0.01, 0.1])]
    assert names == [f"linear L{layers} mean wd={wd}" for layers in ("8", "12", "8+12") for wd in ("0.01", "0.1")]


def test_auroc_pr_auc_and_within_problem_quality():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([], [0.5]) is None
    assert average_precision([0.9, 0.1, 0.8], [True, False, False]) == 1.0
    assert average_precision([0.9, 0.8, 0.1], [False, True, True]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # problem A is easy (high scores), B hard: pooled AUROC rewards that, within-problem does not
    records = [
        {"candidates": [{"score": 0.9, "correct": False}, {"score": 0.95, "correct": True}]},
        {"candidates": [{"score": 0.2, "correct": True}, {"score": 0.3, "correct": False}]},
        {"candidates": [{"score": 0.1, "correct": False}]},
    ]
    q = score_quality(records)
    assert q["problems_mixed"] == 2 and q["score_auroc_within"] == 0.5
    assert q["score_auroc"] == pytest.approx(auroc([0.95, 0.2], [0.9, 0.3, 0.1]))


def test_pooling_reads_the_path_so_far_and_the_step_alone():
    import torch

    from reason.plugins.learn.features import FeatureSpec, pool, pooled_width

    states = torch.arange(12.0).reshape(6, 1, 2)  # six tokens, one layer, two features
    # the prompt is token 0; steps end after tokens 2, 5 and 6
    assert pool(states, 1, [2, 5, 6], "mean").tolist() == [[2.0, 3.0], [5.0, 6.0], [6.0, 7.0]]
    assert pool(states, 1, [2, 5, 6], "mean+step").tolist() == [
        [2.0, 3.0, 2.0, 3.0],
        [5.0, 6.0, 6.0, 7.0],  # the step: tokens 2..4
        [6.0, 7.0, 10.0, 11.0],  # the step: token 5 alone
    ]
    assert pool(states, 1, [2, 5, 6], "mean+last")[1].tolist() == [5.0, 6.0, 8.0, 9.0]
    assert [pooled_width(p) for p in ("mean", "mean+last", "mean+step")] == [1, 2, 2]
    with pytest.raises(ValueError, match="mean, mean\\+last, mean\\+step"):
        FeatureSpec(layers=(4,), pooling="max")


def test_a_centred_head_learns_what_differs_within_a_problem_not_which_problems_are_easy():
    """Feature 0 tells a problem's right candidates from its wrong ones; feature 1 only says
    how easy the problem is (the same for all its candidates). Fitted on raw features a head
    leans on both; centred per problem it leans on feature 0 alone."""
    import random

    import torch

    from reason.plugins.learn.train import CannotFit, Candidate, Problem, Sample, fit

    rng = random.Random(0)
    problems = []
    for p in range(40):
        easy = rng.random()
        problem = Problem(f"p{p}")
        for k in range(8):
            right = rng.random() < 0.15 + 0.7 * easy
            states = torch.tensor([[[rng.gauss(0, 0.3) + (0.5 if right else -0.5), easy * 4 + rng.gauss(0, 0.05)]]] * 3)
            problem.samples.append(Sample(problem.task_id, str(k), right, states, [3], [float(right)]))
        problems.append(problem)

    def weights(centred):
        head = fit(Candidate("linear", (1,), weight_decay=1e-3, centred=centred), problems, [0])
        return head.out.weight[0].tolist()  # per standard deviation of each feature

    raw, centred = weights(False), weights(True)
    assert raw[0] > 1 and raw[1] > 0.3  # easy problems' candidates are more often right
    assert centred[0] > 1 and abs(centred[1]) < 0.1 * centred[0]
    one_outcome = [Problem("q", [s for s in problems[0].samples if s.correct])]
    with pytest.raises(CannotFit, match="both a right and a wrong"):
        fit(Candidate("linear", (1,), centred=True), one_outcome, [0])
