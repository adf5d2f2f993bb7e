"""Score a finished run's candidates again with a probe head: two heads on the very same
samples, without sampling them again.

The `probe` verifier itself scores each candidate, as it does behind a server (the
candidate's text cut at blank lines into steps, read in one forward pass of its own, the
last step taken as ended by the end-of-turn token, which a candidate cut at the token
budget was not); the reference is never passed to it. Prints the run's vote, the head's weighted vote and
top score at N, and the head's AUROC (pooled and within problems), from the same
``compute_metrics`` as ``reason eval``'s summary.

    .venv/bin/python benchmarks/probe_rescore.py benchmarks/results/quality/multiarith-bon8-probe
    .venv/bin/python benchmarks/probe_rescore.py RUN --head OTHER_HEAD.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reason import Config, get_registry
from reason.eval.metrics import compute_metrics
from reason.eval.results import RUN, read_json, records_in
from reason.plugins.backends.models import load_tokenizer, resolve_model
from reason.plugins.learn.labels import split_paragraphs
from reason.prompts import messages_for
from reason.types import ScoreRequest, Step, Task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished `reason eval` run directory (results.jsonl)")
    parser.add_argument("--head", help="the head's card (.json) [the one shipped for the run's model]")
    args = parser.parse_args()

    run = read_json(args.run / RUN)["identity"]["config"]
    config = Config(model=run["model"], system_prompt=run.get("system_prompt"))
    verifier = get_registry().create("verifier", f"probe:{args.head}" if args.head else "probe", config)
    tokenizer = load_tokenizer(resolve_model(config.model))
    records = list(records_in(args.run))
    start = time.perf_counter()
    for record in records:
        task = Task(question=record["question"], id=record["task_id"], kind=record["kind"])
        messages = messages_for(task, config.system_prompt)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        requests = []
        for candidate in record["candidates"]:
            pieces = split_paragraphs(candidate["text"]) or [candidate["text"]]
            steps = [Step(text=piece) for piece in pieces[:-1]] + [Step(text=pieces[-1], finish_reason="eos")]
            requests.append(ScoreRequest(task=task, prompt=prompt, steps=steps))
        for candidate, score in zip(record["candidates"], verifier.score(requests)):
            candidate["score"] = score.last  # aggregation "last", the rows' setting
    n = int(run["n"])
    summary = compute_metrics(records, n)
    keys = (f"maj@{n}", f"weighted@{n}", f"naive@{n}", "score_auroc", "score_auroc_within", "problems_mixed")
    out = {"run": str(args.run), "head": str(verifier.head_path), "problems": len(records)}
    out |= {key: summary.get(key) for key in keys}
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
