"""The learned verifier end to end on the real embedded model (SmolLM2-135M, CPU): rollouts
through the real engine, labels, hidden-state features, heads trained and saved, the
`probe` verifier scoring a real solve; the probe never receives the reference; a head
used with another model, or a damaged one, is refused in one line naming both."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from reason import Config, Runtime, get_registry
from reason.errors import UsageError
from reason.eval.run import EvalRun

pytestmark = pytest.mark.model

ROLLOUT = ["--model", "smollm2", "--backend", "transformers", "--search", "self-consistency", "--verifier", "none",
           "--n", "4", "--max-tokens", "40", "--temperature", "1.0", "--seed", "3", "-q"]


def invoke(*args):
    from reason.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    return result


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Rollouts on six easy problems, features at two layers, a head trained on them."""
    root = tmp_path_factory.mktemp("learn")
    data = root / "train.jsonl"
    rows = [{"question": f"What is {a} plus {b}? Answer with the number.", "answer": str(a + b)}
            for a, b in [(2, 3), (1, 1), (4, 4), (3, 5), (10, 20), (7, 2)]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = root / "rollouts"
    ok(invoke("learn", "rollouts", "--dataset", data, "--out", run, *ROLLOUT))
    ok(invoke("learn", "features", run, "--layers", "4,8"))
    head = root / "head"
    ok(invoke("learn", "train", run, "--layers", "4,8", "--folds", "2", "--out", head))
    return {"data": data, "run": run, "head": head}


def test_rollouts_features_and_a_trained_head_with_its_card(trained):
    run, head = trained["run"], trained["head"]
    trajectories = [json.loads(line) for line in (run / "trajectories.jsonl").read_text().splitlines()]
    assert len(trajectories) == 24
    for t in trajectories:
        assert t["token_ids"] and len(t["labels"]["outcome"]) == len(t["steps"])
    files = sorted((run / "features" / "L4-8").glob("*.safetensors"))
    assert len(files) == 6
    from safetensors.torch import load_file

    tensors = load_file(str(files[0]))
    states = tensors["states.0"]
    assert states.shape[1:] == (2, 576)  # two layers of SmolLM2's 576-wide residual stream
    assert tensors["ends.0"][-1] == states.shape[0]
    card = json.loads(head.with_suffix(".json").read_text())
    assert card["policy"]["name"].lower().startswith("smollm2") and len(card["policy"]["sha256"]) == 64
    assert card["features"]["layers"] and card["kind"] in ("linear", "encoder")
    assert card["training"]["data_sha256"] == json.loads((run / "trajectories.json").read_text())["sha256"]
    assert card["training"]["command"].startswith("reason learn train")
    tried = {r["name"] for r in card["cross_validation"]}
    assert tried >= {"linear L4 mean wd=0.001", "linear L4+8 mean+step wd=0.01", "encoder L8 mean w=128"}
    assert 0 < card["parameters"] < 10_000_000
    assert head.with_suffix(".safetensors").stat().st_size > 1000


def test_a_head_trains_from_trajectories_alone(trained, tmp_path):
    """A rollouts set kept without its results.jsonl (the trees are ~50x larger than the
    trajectories, so a committed set holds only these) still features and trains."""
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("trajectories.jsonl", "trajectories.json", "run.json"):
        shutil.copy(trained["run"] / name, kept / name)
    shutil.copytree(trained["run"] / "features", kept / "features")
    ok(invoke("learn", "train", kept, "--layers", "4,8", "--folds", "2", "--kinds", "linear", "--out", tmp_path / "head"))
    assert (tmp_path / "head.safetensors").is_file()
    (kept / "trajectories.jsonl").unlink()
    refused = invoke("learn", "train", kept, "--layers", "4,8", "--out", tmp_path / "other")
    assert isinstance(refused.exception, UsageError) and "holds no rollouts" in str(refused.exception)


def test_the_probe_verifier_scores_a_real_solve(trained):
    config = Config(model="smollm2", search="best-of-n", n=2, max_tokens=24, seed=1, verifier=f"probe:{trained['head']}.json")
    with Runtime(config) as rt:
        solution = rt.solve("What is 2 plus 2?")
    scores = [c.score for c in solution.candidates]
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    assert solution.answer is not None or solution.candidates


def test_a_head_that_pools_each_step_alone_scores_a_beam(trained, tmp_path):
    """mean+step: the path's mean and the step's own; siblings of one parent then differ."""
    head = tmp_path / "step-head"
    ok(invoke("learn", "train", trained["run"], "--layers", "4,8", "--folds", "2", "--kinds", "linear",
              "--pooling", "mean+step", "--out", head))
    card = json.loads(head.with_suffix(".json").read_text())
    assert card["features"]["pooling"] == "mean+step"
    assert card["input_features"] == 2 * 576 * len(card["features"]["layers"])  # two means per layer
    config = Config(model="smollm2", search="beam", n=2, max_tokens=32, seed=1, step_tokens=8,
                    verifier=f"probe:{head}.json", options={"beam.width": 2})
    with Runtime(config) as rt:
        solution = rt.solve("What is 2 plus 2?")
    steps = [c.step_scores for c in solution.candidates]
    assert steps and all(0.0 < s < 1.0 for path in steps for s in path)


def test_on_the_transformers_backend_the_probe_reads_the_states_the_engine_kept(trained):
    """No second pass over the text: the backend hands each step's states over, and the
    scores equal what the verifier's own forward pass gives."""
    import attrs

    from reason import ScoreRequest

    config = Config(model="smollm2", backend="transformers", search="beam", n=2, max_tokens=48, seed=2, step_tokens=16,
                    verifier=f"probe:{trained['head']}.json", options={"beam.width": 2})
    seen = []
    with Runtime(config) as rt:
        verifier = rt.verifier(config)
        original = verifier.score
        verifier.score = lambda requests: (seen.extend(requests), original(requests))[1]
        solution = rt.solve("What is 2 plus 2?")
        assert solution.candidates and seen
        assert verifier.captured_tokens > 0 and verifier.read_tokens == 0
        assert all(step.hidden is not None for request in seen for step in request.steps)
        request = seen[-1]
        captured = original([request])[0].step_scores
        stripped = attrs.evolve(request, steps=[attrs.evolve(step, hidden=None) for step in request.steps])
        read = original([stripped])[0].step_scores
        assert verifier.read_tokens > 0
        assert captured == pytest.approx(read, abs=2e-3)


def test_the_probe_never_receives_the_reference_and_ignores_it(trained, tmp_path, monkeypatch):
    from reason.plugins.verifiers.probe import ProbeVerifier

    seen = []
    original = ProbeVerifier.score

    def recording(self, requests):
        seen.extend(r.task for r in requests)
        return original(self, requests)

    monkeypatch.setattr(ProbeVerifier, "score", recording)
    config = Config(model="smollm2", search="best-of-n", n=2, max_tokens=24, seed=1, verifier=f"probe:{trained['head']}.json")
    dataset = get_registry().create("dataset", f"jsonl:{trained['data']}", config)
    run = EvalRun(dataset_spec=f"jsonl:{trained['data']}", dataset=dataset, config=config, out=tmp_path / "e", limit=2)
    with Runtime(config) as rt:
        records = run.run(rt, run.prepare())
        verifier = rt.verifier(config)
        assert seen and all(task.reference is None for task in seen)
        # the same paths with the reference attached score the same: the probe reads none of it
        import attrs

        from reason import ScoreRequest, Step

        steps = (Step(text=records[0]["candidates"][0]["text"]),)
        plain = ScoreRequest(task=seen[0], prompt="Q", steps=steps)
        told = ScoreRequest(task=attrs.evolve(seen[0], reference="5"), prompt="Q", steps=steps)
        # (approx: the second read reuses the first one's cached keys and values, which
        # rounds differently in the last float32 digits)
        first, second = original(verifier, [plain])[0].step_scores, original(verifier, [told])[0].step_scores
        assert second == pytest.approx(first, abs=1e-5)


def test_a_head_for_another_model_is_refused_naming_both(trained, tmp_path):
    other = tmp_path / "other"
    card = json.loads(trained["head"].with_suffix(".json").read_text())
    card["policy"] = {"name": "Qwen2.5-Coder-0.5B-Instruct", "spec": "qwen2.5-coder-0.5b", "sha256": "ab" * 32}
    other.with_suffix(".json").write_text(json.dumps(card))
    shutil.copy(trained["head"].with_suffix(".safetensors"), other.with_suffix(".safetensors"))
    verifier = get_registry().create("verifier", f"probe:{other}.json", Config(model="smollm2"))
    with pytest.raises(UsageError) as info:
        verifier.load()
    message = str(info.value)
    assert "\n" not in message
    assert "Qwen2.5-Coder-0.5B-Instruct" in message and "smollm2" in message.lower() and "reason learn" in message


def test_a_damaged_head_is_refused(trained, tmp_path):
    broken = tmp_path / "broken"
    shutil.copy(trained["head"].with_suffix(".json"), broken.with_suffix(".json"))
    data = bytearray(trained["head"].with_suffix(".safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.with_suffix(".safetensors").write_bytes(bytes(data))
    verifier = get_registry().create("verifier", f"probe:{broken}.json", Config(model="smollm2"))
    with pytest.raises(UsageError, match="damaged"):
        verifier.load()
    broken.with_suffix(".json").write_text("{not json")
    with pytest.raises(UsageError, match="damaged"):
        get_registry().create("verifier", f"probe:{broken}.json", Config(model="smollm2"))


def test_a_path_given_as_text_that_ended_the_turn_is_read_with_its_end_of_turn_token(trained):
    """Heads are fitted on sampled ids, which end with the end-of-turn token when the model
    ended the text; a path that comes as text alone (a server's) is read the same way."""
    from reason import ScoreRequest, Step, Task
    from reason.plugins.backends.models import load_tokenizer

    verifier = get_registry().create("verifier", f"probe:{trained['head']}.json", Config(model="smollm2"))
    tokenizer = load_tokenizer("smollm2")
    first, last = "2 plus 2 is 4.\n\n", "The answer is 4."

    def scores(steps):
        return verifier.score([ScoreRequest(task=Task("What is 2 plus 2?"), prompt="What is 2 plus 2?\n", steps=steps)])[0].step_scores

    as_text = scores((Step(text=first), Step(text=last, finish_reason="eos")))
    sampled = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (first, last)]
    as_ids = scores((Step(text=first, token_ids=sampled[0]),
                     Step(text=last, token_ids=[*sampled[1], tokenizer.eos_token_id], finish_reason="eos")))
    cut = scores((Step(text=first), Step(text=last, finish_reason="length")))
    assert as_text == pytest.approx(as_ids, abs=1e-5)
    assert cut[0] == pytest.approx(as_text[0], abs=1e-5) and cut[1] != pytest.approx(as_text[1], abs=1e-4)


def test_the_head_shipped_for_the_default_model_loads_for_its_weights_and_scores():
    """The shipped card's checksum is the default model's (a head for other weights would be
    refused at its first score), its training data is the committed set, and it scores."""
    from pathlib import Path

    from reason.types import ScoreRequest, Step, Task

    verifier = get_registry().create("verifier", "probe", Config(model="qwen2.5-coder-0.5b"))
    card = verifier.card
    trained_on = Path(__file__).parent.parent / "benchmarks/results/learn/rollouts-seed1-all/trajectories.json"
    assert card["training"]["data_sha256"] == json.loads(trained_on.read_text())["sha256"]
    steps = [Step(text="2 plus 2 is 4.\n\n"), Step(text="The answer is \\boxed{4}.", finish_reason="eos")]
    [score] = verifier.score([ScoreRequest(task=Task("What is 2 plus 2?"), prompt="What is 2 plus 2?", steps=steps)])
    assert len(score.step_scores) == 2 and all(0.0 < s < 1.0 for s in score.step_scores)
