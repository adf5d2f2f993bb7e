"""Every tree search and every reflection trigger on the real embedded model, through
the CLI (``reason solve --search ... --reflect ... --tree OUT.json --json``). Kept tiny:
a few samples, short budgets, mini-steps of 8 tokens so trees have depth."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.model

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does he have now?"


def solve(tmp_path, *args):
    tree_file = tmp_path / "tree.json"
    result = subprocess.run(
        [sys.executable, "-c", "from reason.cli import main; main()", "solve", "--json", "--seed", "0",
         "--tree", str(tree_file), *args, QUESTION],
        capture_output=True, text=True, timeout=1200,
        # one intra-op thread: on a small shared machine more threads spin against each
        # other (measured 8x slower on 2 busy cores)
        env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    solution = json.loads(lines[-1])
    tree = json.loads(tree_file.read_text())
    nodes = {node["id"]: node for node in tree["nodes"]}
    assert tree["num_nodes"] == len(nodes)
    for node in tree["nodes"]:  # the tree is well-formed: parents and children agree
        for child in node["children"]:
            assert nodes[child]["parent"] == node["id"] and nodes[child]["depth"] == node["depth"] + 1
    return solution, tree, nodes


def reflections(tree, trigger):
    return [n for n in tree["nodes"] if n["kind"] == "reflection" and n["meta"].get("trigger") == trigger]


def test_beam(tmp_path):
    solution, tree, nodes = solve(
        tmp_path, "--search", "beam", "--n", "4", "--beam-width", "2", "--splitter", "ministep:8", "--max-tokens", "48"
    )
    assert tree["max_depth"] > 1
    assert solution["meta"]["rounds"] > 1
    # one backend call per round for all N paths; one verifier call per round
    assert solution["usage"]["model_calls"] == solution["meta"]["rounds"]
    assert solution["usage"]["verifier_calls"] == solution["meta"]["rounds"]
    # round 0 sampled the root N times; later rounds expanded N/M kept paths M times each
    assert len(nodes[0]["children"]) == 4
    expanded = [n for n in tree["nodes"] if n["depth"] == 1 and n["children"]]
    assert 1 <= len(expanded) <= 2 and sum(len(n["children"]) for n in expanded) == 4
    assert any(n["pruned"] for n in tree["nodes"])
    assert solution["candidates"] and solution["text"]


def test_dvts(tmp_path):
    solution, tree, nodes = solve(
        tmp_path, "--search", "dvts", "--n", "4", "--beam-width", "2", "--splitter", "ministep:8", "--max-tokens", "40"
    )
    groups = solution["meta"]["subtrees"]
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    assert tree["max_depth"] > 1
    for index, group in enumerate(groups):
        for node_id in group:  # every node on the way belongs to the same subtree
            node = nodes[node_id]
            while node["parent"] is not None and node["parent"] != 0:
                assert node["meta"]["subtree"] == index
                node = nodes[node["parent"]]
    # subtrees advance on their own (no global tick): the search waited on the model once
    # per round when both subtrees asked together, at most once per subtree per round
    rounds = solution["meta"]["rounds"]
    assert rounds <= solution["usage"]["model_calls"] <= rounds * len(groups)
    # seeded (--seed 0), the subtrees still draw their own samples from the root: with one
    # seed for every request they were copies of each other
    first_steps = [
        {nodes[i]["text"] for i in nodes[0]["children"] if nodes[i]["meta"]["subtree"] == index} for index in range(2)
    ]
    assert first_steps[0] != first_steps[1]


def test_mcts(tmp_path):
    solution, tree, nodes = solve(
        tmp_path, "--search", "mcts", "--n", "4", "-o", "expansion_width=2", "--splitter", "ministep:8",
        "--max-tokens", "40", "--aggregation", "mean",
    )
    assert tree["max_depth"] > 1
    assert nodes[0]["visits"] == 4 == len(solution["candidates"])
    searched = [n for n in tree["nodes"] if "iteration" in n["meta"]]
    assert max(n["depth"] for n in searched) >= 2  # the search went below the first step
    for node in searched:  # visits add up: a node's visits = its rewards + its search children's
        below = sum(nodes[c]["visits"] for c in node["children"] if "iteration" in nodes[c]["meta"])
        assert node["visits"] == len(node["meta"].get("rewards", [])) + below
    rewards = [c["score"] for c in solution["candidates"]]
    assert nodes[0]["value"] == pytest.approx(sum(rewards) / 4, abs=1e-4)
    assert 0 < solution["score"] <= 1


def test_compute_optimal(tmp_path):
    solution, tree, nodes = solve(
        tmp_path, "--search", "compute-optimal", "--n", "2", "--beam-width", "2", "--splitter", "ministep:16",
        "--max-tokens", "48", "-o", "probe=2",
    )
    meta = solution["meta"]
    assert 0 <= meta["difficulty"] <= 1 and meta["strategy"] in {"best-of-n", "dvts", "beam"}
    assert len(meta["probe"]) == 2 and all(nodes[p["node_id"]]["meta"]["probe"] for p in meta["probe"])
    assert meta["difficulty"] == pytest.approx(1 - sum(p["score"] for p in meta["probe"]) / 2, abs=1e-5)
    assert solution["candidates"]


def test_deepconf(tmp_path):
    solution, tree, nodes = solve(
        tmp_path, "--search", "deepconf", "--n", "4", "-o", "warmup=2", "-o", "window=8", "-o", "chunk=16",
        "-o", "percentile=50", "--max-tokens", "64",
    )
    meta = solution["meta"]
    assert meta["online"] == 2 and meta["stopped"] + meta["finished"] == 2
    assert meta["tokens"] == solution["usage"]["completion_tokens"]  # every generated token counted once
    assert meta["tokens_saved"] == pytest.approx(meta["tokens_baseline"] - meta["tokens"], abs=0.1)
    stopped = [n for n in tree["nodes"] if n["meta"].get("deepconf") == "stopped"]
    assert len(stopped) == meta["stopped"] and all(n["pruned"] and not n["children"] for n in stopped)
    assert len(solution["candidates"]) == 2 + meta["finished"]


def test_reflect_marco(tmp_path):
    solution, tree, _ = solve(tmp_path, "--search", "greedy", "--reflect", "marco", "--max-tokens", "160")
    (node,) = reflections(tree, "marco")
    assert "Wait! Maybe I made some mistakes! I need to rethink from scratch." in node["text"]
    assert node["children"]  # the model went on after it
    assert "I need to rethink from scratch." in solution["text"]


def test_reflect_low_confidence(tmp_path):
    solution, tree, _ = solve(
        tmp_path, "--search", "beam", "--n", "4", "--beam-width", "2", "--splitter", "ministep:8", "--max-tokens", "48",
        "--reflect", "low-confidence:0.5",
    )
    found = reflections(tree, "low-confidence:0.5")
    assert found
    nodes = {n["id"]: n for n in tree["nodes"]}
    for node in found:  # each follows a generated step whose mean confidence was below 0.5
        parent = nodes[node["parent"]]
        assert parent["kind"] == "step" and parent["tokens"] > 0


def test_reflect_on_verifier_fail(tmp_path):
    # the confidence verifier gives no pass/fail: a threshold above any score makes every
    # scored step fail, so the trigger fires once per path and the search goes on after it
    solution, tree, nodes = solve(
        tmp_path, "--search", "beam", "--n", "2", "--beam-width", "2", "--splitter", "ministep:8", "--max-tokens", "32",
        "--reflect", "on-verifier-fail", "-o", "fail_threshold=0.999",
    )
    found = reflections(tree, "on-verifier-fail")
    assert found and all("a check says this is not right" in n["text"] for n in found)
    for node in found:
        assert nodes[node["parent"]]["meta"]["score"]["step_scores"]  # it followed a scored step
    assert any(node["children"] for node in found)


def test_reflect_budget_forcing(tmp_path):
    solution, tree, _ = solve(
        tmp_path, "--search", "greedy", "--reflect", "budget-forcing", "-o", "min_thinking_tokens=96",
        "--max-tokens", "160",
    )
    found = reflections(tree, "budget-forcing")
    assert found and all(n["text"].strip() == "Wait" for n in found)
    assert "Wait" in solution["text"]
