#!/usr/bin/env python
"""PRM-guided search with a real process reward model on a GPU machine.

vLLM serves the policy (``--backend vllm``, prefix caching on); the PRM scores every step
of every path in batches, either with transformers on the same GPU (``--prm-engine
transformers``, the ``prm`` verifier as shipped) or with vLLM's pooling API
(``--prm-engine vllm``: ``LLM(runner="pooling")`` + ``encode(pooling_task=
"token_classify")``, for two-class reward heads such as Qwen2.5-Math-PRM). Both engines
share the verifier's input formats and prefix cache, so a step is scored once however
many rounds its path survives.

Needs: a CUDA GPU, ``pip install 'reason-runtime[vllm]'``, and the weights on disk (an HF
directory, or a hub id already in the HF cache). For example, on one 80 GB GPU::

    python scripts/prm_vllm_gpu.py \\
        --policy Qwen/Qwen2.5-Math-1.5B-Instruct \\
        --prm /models/Qwen2.5-Math-PRM-7B --prm-format qwen \\
        --dataset math500 --limit 50 --search beam --n 16 --beam-width 4

    # the same PRM through vLLM's pooling runner instead of transformers
    python scripts/prm_vllm_gpu.py --prm /models/Qwen2.5-Math-PRM-7B --prm-engine vllm ...

    # Math-Shepherd / RLHFlow PRMs (next-token "+"/"-" heads) use the transformers engine
    python scripts/prm_vllm_gpu.py --prm /models/math-shepherd-mistral-7b-prm --prm-format math-shepherd ...

It prints one JSON line per problem and a summary line (accuracy, PRM steps scored per
second, prefix-cache hit rate); ``--out FILE`` also writes the per-problem lines there.
``--backend transformers --prm embedded`` runs the same wiring on CPU with the embedded
SmolLM2 (a smoke test of the script, not a PRM).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from reason import Config, Option, Runtime, Solution
from reason.errors import ReasonError, UsageError, VerifierError
from reason.log import configure as configure_logs
from reason.plugins.verifiers.prm import PRMVerifier
from reason.plugins.verifiers.scoring import ReadResult, Row
from reason.registry import get_registry


class VLLMPRMVerifier(PRMVerifier):
    """The ``prm`` verifier with vLLM's pooling runner as the engine (two-class heads).

    Only the forward pass changes: formats, read positions, batching by the scheduler
    and the prefix cache are the ``prm`` verifier's own.
    """

    class Options(PRMVerifier.Options):
        gpu_memory_utilization = Option(float, 0.35, minimum=0.01, maximum=1, help="GPU memory share of the PRM's vLLM engine")

    options: Options

    def load(self) -> None:
        if self._model is not None:
            return
        if self.format.head != "classifier":
            raise UsageError(
                f"--prm-engine vllm reads a two-class reward head (the qwen format); the {self.format.name} "
                "format reads next-token logits: use --prm-engine transformers"
            )
        from vllm import LLM

        from reason.plugins.backends.models import load_tokenizer

        self._tokenizer = load_tokenizer(self.source)
        settings: dict[str, Any] = dict(
            model=self.source.path,
            trust_remote_code=True,
            gpu_memory_utilization=self.options.gpu_memory_utilization,
            dtype=self.dtype or "auto",
            enforce_eager=True,
        )
        try:
            self._model = LLM(runner="pooling", **settings)  # vLLM >= 0.10
        except TypeError:
            self._model = LLM(task="reward", **settings)  # older releases

    def _read(self, rows: list[Row]) -> ReadResult:
        import torch

        prompts = [{"prompt_token_ids": row.input_ids} for row in rows]
        try:
            outputs = self._model.encode(prompts, pooling_task="token_classify", use_tqdm=False)
        except TypeError:  # releases before pooling tasks: the model's own (STEP) pooler
            outputs = self._model.encode(prompts, use_tqdm=False)
        values = []
        for row, output in zip(rows, outputs):
            data = torch.as_tensor(output.outputs.data).float()
            if data.dim() == 1:
                data = data.view(-1, 2)
            if data.shape[0] == len(row.input_ids):  # one row per token
                picked = data[row.positions]
            else:  # one row per step tag (STEP pooling)
                tag = row.input_ids[row.positions[-1]]
                tags = [i for i, t in enumerate(row.input_ids) if t == tag]
                if data.shape[0] != len(tags):
                    raise VerifierError(f"prm (vllm): {data.shape[0]} outputs for {len(row.input_ids)} tokens / {len(tags)} tags")
                picked = data[[tags.index(p) for p in row.positions]]
            if not torch.allclose(picked.sum(-1), torch.ones(len(picked)), atol=1e-3):
                picked = torch.softmax(picked, dim=-1)  # logits, not probabilities
            values.append(picked[:, 1].tolist())
        return ReadResult(values=values, batches=1, tokens=sum(len(row.input_ids) for row in rows))


def check_environment(args: argparse.Namespace) -> None:
    """Fail in one clear line before anything heavy starts."""
    if args.backend == "vllm" or args.prm_engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UsageError(
                "vllm is not installed: pip install 'reason-runtime[vllm]' on a CUDA GPU "
                "(vLLM's CPU build runs it too, slowly: bash scripts/install-vllm.sh .venv/bin/python)"
            )
    from reason.plugins.backends.models import resolve_model

    resolve_model(None if args.prm == "embedded" else args.prm)  # a missing directory fails here


def build_config(args: argparse.Namespace) -> Config:
    verifier = "prm-vllm" if args.prm_engine == "vllm" else "prm"
    prm: dict[str, Any] = {"format": args.prm_format, "batch_size": args.prm_batch_size, "device": args.prm_device, "dtype": args.prm_dtype}
    if args.prm_engine == "vllm":
        prm["gpu_memory_utilization"] = args.prm_memory
    if args.prm != "embedded":
        prm["model"] = args.prm
    options: dict[str, Any] = {verifier: prm}
    if args.search in ("beam", "dvts"):
        options[args.search] = {"width": args.beam_width, "max_steps": args.max_steps}
    if args.backend == "vllm":
        options["vllm"] = {"gpu_memory_utilization": args.policy_memory, "max_model_len": args.max_model_len}
    return Config(
        search=args.search,
        backend=args.backend,
        model=None if args.policy == "embedded" else args.policy,
        verifier=verifier,
        n=args.n,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        aggregation=args.aggregation,
        seed=args.seed,
        options=options,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="Qwen/Qwen2.5-Math-1.5B-Instruct", help="policy model (HF dir or id; 'embedded')")
    parser.add_argument("--prm", required=True, help="PRM weights: HF directory or cached hub id ('embedded' = SmolLM2)")
    parser.add_argument("--prm-format", default="auto", choices=["auto", "generic", "rlhflow", "math-shepherd", "qwen"])
    parser.add_argument("--prm-engine", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--prm-batch-size", type=int, default=16)
    parser.add_argument("--prm-device", default=None, help="transformers engine device [cuda when visible]")
    parser.add_argument("--prm-dtype", default=None, help="[bfloat16 on GPU]")
    parser.add_argument("--prm-memory", type=float, default=0.35, help="vLLM PRM engine: GPU memory fraction")
    parser.add_argument("--policy-memory", type=float, default=0.45, help="vLLM policy: GPU memory fraction")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--backend", default="vllm", choices=["vllm", "transformers"])
    parser.add_argument("--dataset", default="math500", help="math500 | gsm8k | multiarith | PATH.jsonl")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--search", default="beam", help="beam | dvts | best-of-n ...")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--beam-width", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--aggregation", default="last", choices=["last", "min", "prod", "mean"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the per-problem JSON lines here")
    parser.add_argument("--log-level", default="warning", help="logs on stderr: debug shows every PRM call")
    args = parser.parse_args(argv)
    configure_logs(args.log_level)

    try:
        check_environment(args)
        registry = get_registry()
        registry.add("verifier", "prm-vllm", VLLMPRMVerifier, plugin="scripts/prm_vllm_gpu.py")
        config = build_config(args)
        spec = args.dataset if not args.dataset.endswith(".jsonl") else f"jsonl:{args.dataset}"
        dataset = registry.create("dataset", spec, config)
        tasks = list(dataset.load())[args.offset : args.offset + args.limit]
        if not tasks:
            raise UsageError(f"--offset {args.offset} --limit {args.limit} selects no problem of {args.dataset}")
        out = open(args.out, "w") if args.out else None
        correct = 0

        def report(solution: Solution) -> None:
            nonlocal correct
            ok = dataset.is_correct(solution.task, solution.answer)
            correct += ok
            line = json.dumps({
                "id": solution.task.id, "answer": solution.answer, "reference": solution.task.reference,
                "correct": ok, "score": solution.score, "seconds": round(solution.seconds, 2),
                "usage": solution.usage.to_dict(),
            })
            print(line, flush=True)
            if out:
                out.write(line + "\n")

        start = time.perf_counter()
        with Runtime(config, registry=registry) as runtime:
            runtime.solve_many(tasks, on_solution=report)
            stats = runtime.verifier(runtime.config).stats.to_dict()
            policy = getattr(runtime.backend, "stats", None)
            policy_stats = policy.to_dict() if hasattr(policy, "to_dict") else {}
        if out:
            out.close()
        print(json.dumps({
            "summary": True, "problems": len(tasks), "accuracy": round(correct / len(tasks), 4),
            "search": args.search, "n": args.n, "policy": args.policy, "prm": args.prm,
            "prm_engine": args.prm_engine, "prm_format": args.prm_format,
            "prm_stats": stats, "policy_stats": policy_stats,
            "policy_prefix_cache_hit_rate": policy_stats.get("prefix_cache_hit_rate"),
            "seconds": round(time.perf_counter() - start, 1),
        }), flush=True)
        return 0
    except UsageError as exc:
        print(f"prm_vllm_gpu: {exc}", file=sys.stderr)
        return 2
    except ReasonError as exc:
        print(f"prm_vllm_gpu: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
