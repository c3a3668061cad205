"""Benchmark 6: the paper's regime, many clients on QNLI and MNLI.

Questions (arXiv 2409.02346, Table 2; extended version 2502.01755):

* ``cells``: with the total number of train examples fixed, at 3, 20
  and 50 clients on QNLI and MNLI, does plain LoRA fall behind, does
  RoLoRA hold up, and does LoRA's loss follow its aggregation gap (the
  relative distance between mean_i(B_i A_i) and what the server keeps)?
* ``steps``: MNLI at 50 clients with 1, 5 and 20 local steps (batches)
  per round (2502.01755's local-steps ablation).
* ``skew``: MNLI at 20 clients under Dirichlet label skew (alpha 0.5).
* ``lr``: RoLoRA and LoRA on MNLI at 50 clients at 0.001, 0.01 and
  0.03 beside their SST-2 grid rate 0.003: the cells' rates come from
  SST-2 at 3 clients, and RoLoRA, which trains each factor every other
  round, may want another rate than LoRA here. (0.03 was added when
  both did best at 0.01, the grid's edge.)
* ``long``: RoLoRA and LoRA at 50 clients for 48 rounds on both tasks.
  At 16 rounds nothing has converged at 50 clients (MNLI barely leaves
  chance), so the cells cannot say which method ends ahead; these runs
  can. On the CPU kind the cell ran on, their first 16 rounds are the
  16-round cell's run (nothing in a run depends on the round count),
  which the report checks at round 16; on another kind the two drift
  apart by float rounding (about 0.1 point by round 8 here).

Protocol: all-MiniLM-L6-v2 with LoRA rank 2 on query/value of its top
two layers (4 and 5 of 0-5: the paper adapts the upper layers 15-23 of
RoBERTa-Large's 24), the frozen layers below cached once per input
(``rolora.prefix_cache``: the prefix runs without dropout), classifier
head frozen, 960 train examples in total whatever the client count
(about the smallest at which MiniLM leaves chance on these tasks, from
the ``pairs`` probes of glue_head_to_head.py), 1,000 test rows, 16
rounds of 5 local epochs (at 20 and 50 clients one local epoch is one or
two steps and nothing learns), batch 16, 96 tokens, AdamW at each
method's best rate from the SST-2 grid of glue_head_to_head.py (run
first if missing). Runs are seed-major and start at 50 clients on MNLI,
where the paper's gap is widest, so a stopped suite has the cells that
matter most; every finished run is one line of ``glue_regime_runs.jsonl``
(with the device it ran on) and a restart skips it. ``--only`` and the
filters choose what runs; the report always covers every part.
``--jobs N`` runs N at once (a process and a torch thread each; the
numbers are those of one at a time); ``--gpu`` trains on CUDA device 0,
and each row records where it ran.

    python benchmarks/glue_regime.py [--only cells,steps,skew,lr,long]
        [--methods rolora,lora,...] [--seeds 0,1] [--clients 50]
        [--tasks mnli,qnli] [--jobs N] [--gpu] [--report-only]
        [--quick] [--glue-root DIR] [--model NAME] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import glue_head_to_head as h2h  # noqa: E402
from _common import METHODS, RunSpec, Store  # noqa: E402

PARTS = ("cells", "steps", "skew", "lr", "long")
T = TypeVar("T")

# The papers' numbers at rank 2 (2409.02346, Table 2, RoBERTa-Large) and
# rank 4 (2502.01755), for the report's comparison; % accuracy.
PAPER = {
    ("qnli", 50): {"rolora": 89.83, "lora": 82.57},
    ("mnli", 50): {"rolora": 85.15, "lora": 58.96},
}
PAPER_NOTES = (
    "2502.01755 (rank 4, 50 clients): MNLI RoLoRA 82.98, LoRA 52.64 "
    "(LoRA's seed sd 15.07); FlexLoRA averages 54.67. Local steps, MNLI "
    "50 clients: RoLoRA 84.39 with 1 step, 82.98 with 20; FFA-LoRA "
    "72.52 and 69.97.")


@dataclass(frozen=True)
class Plan:
    base: RunSpec
    methods: tuple[str, ...] = METHODS
    tasks: tuple[str, ...] = ("mnli", "qnli")
    clients: tuple[int, ...] = (50, 20, 3)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps_task: str = "mnli"
    steps_clients: int = 50
    steps: tuple[int, ...] = (1, 5, 20)
    steps_seeds: tuple[int, ...] = (0,)
    steps_methods: tuple[str, ...] = common.BASE_METHODS
    skew_task: str = "mnli"
    skew_clients: int = 20
    skew_alpha: float = 0.5
    skew_seeds: tuple[int, ...] = (0, 1)
    skew_methods: tuple[str, ...] = common.BASE_METHODS
    lr_task: str = "mnli"
    lr_clients: int = 50
    lr_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    lr_seeds: tuple[int, ...] = (0,)
    lr_methods: tuple[str, ...] = ("rolora", "lora")
    long_clients: int = 50
    long_rounds: int = 48
    long_seeds: tuple[int, ...] = (0,)
    long_methods: tuple[str, ...] = ("rolora", "lora")


FULL = Plan(base=RunSpec(
    task="mnli", method="rolora", clients=3, seed=0, lr=1e-2, rank=2,
    rounds=16, train_samples=960, eval_samples=1000, eval_every=4,
    tok_len=96, local_epochs=5, layers=(4, 5), prefix_cache=True))
QUICK = Plan(base=RunSpec(
    task="sst2", method="rolora", clients=2, seed=0, lr=1e-2, rank=2,
    rounds=2, train_samples=48, eval_samples=16, eval_every=1, tok_len=16,
    local_epochs=1, layers=(1,), prefix_cache=True),
    tasks=("sst2",), clients=(4, 2), seeds=(0,), steps_task="sst2",
    steps_clients=4, steps=(1, 2), skew_task="sst2", skew_clients=4,
    skew_seeds=(0,), lr_task="sst2", lr_clients=4, lr_rates=(1e-2, 3e-2),
    long_clients=4, long_rounds=3)


def cell_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    """Seed-major, many clients first, MNLI first."""
    return [plan.base.with_(task=t, method=m, clients=c, seed=s, lr=lrs[m])
            for s in plan.seeds for c in plan.clients for t in plan.tasks
            for m in plan.methods]


def steps_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    return [plan.base.with_(task=plan.steps_task, method=m,
                            clients=plan.steps_clients, seed=s, lr=lrs[m],
                            local_unit="batch", local_epochs=n)
            for s in plan.steps_seeds for n in plan.steps
            for m in plan.steps_methods if m in plan.methods]


def skew_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    return [plan.base.with_(task=plan.skew_task, method=m,
                            clients=plan.skew_clients, seed=s, lr=lrs[m],
                            alpha=plan.skew_alpha)
            for s in plan.skew_seeds for m in plan.skew_methods
            if m in plan.methods]


def lr_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    """The rates of ``lr_rates`` whatever the grid chose (``lrs``: the
    run at a method's grid rate is its cell run)."""
    return [plan.base.with_(task=plan.lr_task, method=m,
                            clients=plan.lr_clients, seed=s, lr=lr)
            for s in plan.lr_seeds for m in plan.lr_methods
            if m in plan.methods for lr in plan.lr_rates]


def long_specs(plan: Plan, lrs: dict[str, float]) -> list[RunSpec]:
    return [plan.base.with_(task=t, method=m, clients=plan.long_clients,
                            seed=s, lr=lrs[m], rounds=plan.long_rounds)
            for s in plan.long_seeds for t in plan.tasks
            for m in plan.long_methods if m in plan.methods]


MAKERS = (("cells", cell_specs), ("steps", steps_specs),
          ("skew", skew_specs), ("lr", lr_specs), ("long", long_specs))


def learning_rates(plan: Plan, h2h_plan: h2h.Plan, h2h_store: Store,
                   glue_root: Path, status: Path | None, run: bool
                   ) -> dict[str, float]:
    """Each method's best SST-2 grid rate; with ``run``, the grid's
    missing runs first."""
    h2h_plan = replace(h2h_plan, methods=plan.methods)
    if run:
        common.ensure(h2h.lr_specs(h2h_plan), h2h_store, glue_root, status)
    return h2h.best_lrs(h2h_plan, h2h_store)


def known_rates(plan: Plan, h2h_plan: h2h.Plan, h2h_store: Store,
                glue_root: Path) -> tuple[Plan, dict[str, float]]:
    """``plan`` cut to the methods whose SST-2 grid has run, and their
    rates (a report over every stored run cannot place the others)."""
    lrs: dict[str, float] = {}
    for method in plan.methods:
        try:
            lrs.update(learning_rates(replace(plan, methods=(method,)),
                                      h2h_plan, h2h_store, glue_root, None,
                                      run=False))
        except RuntimeError:   # its grid is incomplete
            continue
    return replace(plan, methods=tuple(m for m in plan.methods
                                       if m in lrs)), lrs


def device_name(use_gpu: bool) -> str:
    """Where the runs go: CUDA device 0 with ``use_gpu``, else the CPU
    with the vector instructions torch's kernels use (CPUs that differ
    there round differently, so a run repeats bit for bit only on its
    kind)."""
    import torch

    if use_gpu:
        return torch.cuda.get_device_name(0)
    return (f"cpu ({platform.machine()}, "
            f"{torch.backends.cpu.get_cpu_capability()})")


def run_parts(plan: Plan, parts: list[str], lrs: dict[str, float],
              store: Store, glue_root: Path, status: Path | None,
              jobs: int = 1, use_gpu: bool = False) -> None:
    device = device_name(use_gpu)
    for name, make in MAKERS:
        if name in parts:
            common.ensure(make(plan, lrs), store, glue_root, status,
                          extra={"device": device}, jobs=jobs,
                          use_gpu=use_gpu)


# --- report ------------------------------------------------------------


def _rows(store: Store, specs: list[RunSpec]) -> list[dict[str, Any]]:
    return [r for r in (store.get(s) for s in specs) if r is not None]


def _gap(row: dict[str, Any], field: str) -> float | None:
    """Mean over rounds of ``field`` (aggregation_gap or client_drift)."""
    values = [g[field] for g in row.get("gap_rounds", [])
              if g.get(field) is not None]
    return sum(values) / len(values) if values else None


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3g}" if values else "n/a"


def _mean_gap(rows: list[dict[str, Any]], field: str) -> str:
    """``field`` (aggregation_gap or client_drift) averaged over rounds,
    then over ``rows``, formatted; n/a if no row has it."""
    return _mean([g for r in rows if (g := _gap(r, field)) is not None])


def _gap_drift(rows: list[dict[str, Any]]) -> str:
    return (f"{_mean_gap(rows, 'aggregation_gap')} / "
            f"{_mean_gap(rows, 'client_drift')}")


def cells_table(plan: Plan, store: Store, lrs: dict[str, float]
                ) -> list[str]:
    lines = ["| task | clients | " + " | ".join(
        map(common.label, plan.methods)) + " | paper (RoLoRA / LoRA) |",
             "|---|---|" + "---|" * len(plan.methods) + "---|"]
    gaps = ["| task | clients | " + " | ".join(
        f"{m} gap / drift" for m in plan.methods) + " |",
            "|---|---|" + "---|" * len(plan.methods)]
    for task in plan.tasks:
        for clients in sorted(plan.clients):
            row, gap_row = [], []
            for method in plan.methods:
                done = _rows(store, [
                    plan.base.with_(task=task, method=method,
                                    clients=clients, seed=s,
                                    lr=lrs[method]) for s in plan.seeds])
                row.append(common.cell([common.score(r) for r in done]))
                gap_row.append(_gap_drift(done))
            paper = PAPER.get((task, clients))
            ref = f"{paper['rolora']} / {paper['lora']}" if paper else "—"
            lines.append(f"| {task} | {clients} | " + " | ".join(row) +
                         f" | {ref} |")
            gaps.append(f"| {task} | {clients} | " + " | ".join(gap_row) +
                        " |")
    return lines + ["", "Aggregation gap and client drift, mean over "
                    "rounds and seeds:", ""] + gaps


def paired_table(plan: Plan, store: Store, lrs: dict[str, float],
                 baseline: str = "lora") -> list[str]:
    """Each method minus ``baseline``, seed by seed, over the seeds both
    ran (``common.paired_points``)."""
    if baseline not in plan.methods:
        return [f"(none: {baseline} is not among the methods)"]
    others = [m for m in plan.methods if m != baseline]
    lines = ["| task | clients | " + " | ".join(
        f"{common.label(m)} − {baseline}" for m in others) + " |",
             "|---|---|" + "---|" * len(others)]
    for task in plan.tasks:
        for clients in sorted(plan.clients):
            scores = {m: {r["spec"]["seed"]: common.score(r)
                          for r in _rows(store, [plan.base.with_(
                              task=task, method=m, clients=clients,
                              seed=s, lr=lrs[m]) for s in plan.seeds])}
                      for m in plan.methods}
            cells = [_paired_cell(common.paired_points(scores[m],
                                                       scores[baseline]))
                     for m in others]
            lines.append(f"| {task} | {clients} | " + " | ".join(cells) +
                         " |")
    return lines


def _paired_cell(diffs: list[float]) -> str:
    """'-4.30 ± 1.59, ahead 0/3' (points), or 'n/a'."""
    if not diffs:
        return "n/a"
    mean, sd = common.mean_sd(diffs)
    spread = f" ± {sd:.2f}" if len(diffs) > 1 else ""
    return (f"{mean:+.2f}{spread}, ahead {sum(d > 0 for d in diffs)}/"
            f"{len(diffs)}")


def steps_table(plan: Plan, store: Store, lrs: dict[str, float]
                ) -> list[str]:
    """Accuracy, then aggregation gap / client drift (mean over rounds
    and seeds), by local steps: does LoRA's gap grow as clients drift
    further apart, and does its accuracy follow?"""
    methods = [m for m in plan.steps_methods if m in plan.methods]
    head = "|---|" + "---|" * len(methods)
    lines = ["| local steps | " + " | ".join(methods) + " |", head]
    gaps = ["| local steps | " + " | ".join(
        f"{m} gap / drift" for m in methods) + " |", head]
    for n in plan.steps:
        cells, gap_cells = [], []
        for method in methods:
            done = _rows(store, [s for s in steps_specs(plan, lrs)
                                 if s.method == method
                                 and s.local_epochs == n])
            cells.append(common.cell([common.score(r) for r in done]))
            gap_cells.append(_gap_drift(done))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        gaps.append(f"| {n} | " + " | ".join(gap_cells) + " |")
    return lines + ["", "Aggregation gap and client drift, mean over "
                    "rounds and seeds:", ""] + gaps


def skew_table(plan: Plan, store: Store, lrs: dict[str, float]
               ) -> list[str]:
    methods = [m for m in plan.skew_methods if m in plan.methods]
    lines = ["| method | accuracy | gap | drift |", "|---|---|---|---|"]
    for method in methods:
        done = _rows(store, [s for s in skew_specs(plan, lrs)
                             if s.method == method])
        lines.append(
            f"| {method} | {common.cell([common.score(r) for r in done])} "
            f"| {_mean_gap(done, 'aggregation_gap')} "
            f"| {_mean_gap(done, 'client_drift')} |")
    return lines


def lr_table(plan: Plan, store: Store, lrs: dict[str, float]
             ) -> list[str]:
    """Accuracy and aggregation gap / client drift by learning rate; *
    marks each method's grid rate, the rate of its cells."""
    methods = [m for m in plan.lr_methods if m in plan.methods]
    lines = ["| lr | " + " | ".join(f"{m} | {m} gap / drift"
                                     for m in methods) + " |",
             "|---|" + "---|---|" * len(methods)]
    for lr in plan.lr_rates:
        cells = []
        for method in methods:
            done = _rows(store, [s for s in lr_specs(plan, lrs)
                                 if s.method == method and s.lr == lr])
            mark = " *" if lrs.get(method) == lr else ""
            cells += [common.cell([common.score(r) for r in done]) + mark,
                      _gap_drift(done)]
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return lines


def _at(row: dict[str, Any], rnd: int) -> float | None:
    """The primary metric at evaluated round ``rnd`` of a run's curve."""
    metric = row["primary_metric"]
    return next((p[metric] for p in row["curve"] if p["round"] == rnd),
                None)


def long_checkpoints(plan: Plan) -> list[int]:
    """The evaluated rounds the long table shows: the cells' round count
    and its multiples up to the long run's."""
    step = plan.base.rounds
    return list(range(step, plan.long_rounds + 1, step)) or \
        [plan.long_rounds]


def long_table(plan: Plan, store: Store, lrs: dict[str, float]
               ) -> tuple[list[str], dict[str, Any]]:
    """Accuracy at each checkpoint round, and whether round
    ``base.rounds`` of each long run equals its 16-round cell run."""
    marks = long_checkpoints(plan)
    lines = ["| task | method | " + " | ".join(f"round {r}" for r in marks)
             + " | gap / drift | round " + str(plan.base.rounds) +
             " = cell |",
             "|---|---|" + "---|" * len(marks) + "---|---|"]
    checks: dict[str, Any] = {}
    for task in plan.tasks:
        for method in plan.long_methods:
            if method not in plan.methods:
                continue
            specs = [s for s in long_specs(plan, lrs)
                     if s.task == task and s.method == method]
            done = [(s, r) for s in specs if (r := store.get(s))]
            cells = [common.cell([v for _, r in done
                                  if (v := _at(r, m)) is not None])
                     for m in marks]
            same, across = [], []
            for spec, row in done:
                cell = store.get(spec.with_(rounds=plan.base.rounds))
                if cell is None:
                    continue
                match = _at(row, plan.base.rounds) == \
                    common.final_metric(cell)
                # Bit-equal only on one kind of CPU: another rounds
                # differently, and these runs amplify that, so there a
                # difference is no failure.
                if cell.get("device") == row.get("device"):
                    same.append(match)
                    checks[spec.key] = match
                else:
                    across.append(match)
            if same:
                equal = "yes" if all(same) else "NO"
            elif across:
                equal = "yes (other CPU)" if all(across) else \
                    "differs (other CPU)"
            else:
                equal = "n/a"
            lines.append(f"| {task} | {method} | " + " | ".join(cells) +
                         f" | {_gap_drift([r for _, r in done])} | "
                         f"{equal} |")
    return lines, checks


def runs_table(plan: Plan, store: Store,
               lrs: dict[str, float]) -> tuple[list[str], dict[str, Any]]:
    coverage: dict[str, Any] = {}
    lines = ["| part | planned | done | under way (rounds written) | "
             "run hours | ran on |", "|---|---|---|---|---|---|"]
    for name, make in MAKERS:
        specs = make(plan, lrs)
        done = _rows(store, specs)
        devices = sorted({r.get("device", "cpu") for r in done})
        hours = round(sum(r["wall_seconds"] for r in done) / 3600, 2)
        going = common.under_way(store, specs)
        coverage[name] = {"planned": len(specs), "done": len(done),
                          "under_way": going, "run_hours": hours,
                          "devices": devices}
        lines.append(f"| {name} | {len(specs)} | {len(done)} | "
                     f"{', '.join(going.values()) or '—'} | {hours} | "
                     f"{', '.join(devices) or '—'} |")
    return lines, coverage


def chance(plan: Plan, glue_root: Path) -> dict[str, dict[str, float]]:
    """Per task and seed (every seed of the plan), the majority label's
    share of the test rows a run is scored on. The 1,000 test rows of
    QNLI and MNLI are drawn with the run's seed, so chance differs by
    seed (MNLI: 34.1 % at seed 0, 39.1 % at seed 1)."""
    seeds = sorted({*plan.seeds, *plan.steps_seeds, *plan.skew_seeds,
                    *plan.lr_seeds, *plan.long_seeds})
    tasks = dict.fromkeys((*plan.tasks, plan.steps_task, plan.skew_task,
                           plan.lr_task))
    return {t: {str(s): common.majority_share(
        plan.base.with_(task=t, seed=s), glue_root) for s in seeds}
        for t in tasks}


def _chance_text(chance: dict[str, dict[str, float]]) -> str:
    """'mnli 34.10% (seed 0), 39.10% (seed 1); sst2 50.92%' (one value
    where every seed scores on the same rows)."""
    parts = []
    for task, by_seed in chance.items():
        if len(set(by_seed.values())) == 1:
            parts.append(f"{task} {100 * next(iter(by_seed.values())):.2f}%")
        else:
            parts.append(f"{task} " + ", ".join(
                f"{100 * c:.2f}% (seed {s})" for s, c in by_seed.items()))
    return "; ".join(parts)


def report(plan: Plan, store: Store, lrs: dict[str, float], command: str,
           chance: dict[str, dict[str, float]]
           ) -> tuple[str, dict[str, Any]]:
    """Every part's tables, whatever this invocation ran."""
    runs, coverage = runs_table(plan, store, lrs)
    text = ["# The paper's regime: many clients on QNLI and MNLI", "",
            f"Command: `{command}`", "",
            "Final test accuracy in %, mean ± sd over seeds, (n) = "
            "seeds; where two cells of a row have different n they "
            "average different seeds (seeds differ by several points), "
            "so compare methods in the paired table below; FedSA-LoRA's "
            "cells are per-client scores (each client's model on its "
            "own test share). Learning rates (SST-2 grid): "
            + ", ".join(f"{m} {lr:g}" for m, lr in lrs.items()) +
            ". Chance (the majority label's share of the test rows, "
            "which are drawn per seed): " + _chance_text(chance) + ".",
            "", "## Runs", "", *runs, ""]
    long_lines, same_as_cell = long_table(plan, store, lrs)
    text += ["## Accuracy, aggregation gap and client drift", "",
             *cells_table(plan, store, lrs), "",
             "Paired by seed: each method's final accuracy minus LoRA's "
             "at the same seed (same split, test rows and initial "
             "adapter), in points, mean ± sd over the seeds both ran, and "
             "at how many of them the method is ahead:", "",
             *paired_table(plan, store, lrs), "", PAPER_NOTES, "",
             f"## Local steps ({plan.steps_task}, {plan.steps_clients} "
             f"clients)", "", *steps_table(plan, store, lrs), "",
             f"## Label skew ({plan.skew_task}, {plan.skew_clients} "
             f"clients, Dirichlet {plan.skew_alpha:g})", "",
             *skew_table(plan, store, lrs), "",
             f"## Learning rate ({plan.lr_task}, {plan.lr_clients} "
             f"clients)", "",
             "Final accuracy in %, mean ± sd over seeds, and the mean "
             "aggregation gap / client drift; * marks each method's "
             "SST-2 grid rate, the rate of every other part.", "",
             *lr_table(plan, store, lrs), "",
             f"## Longer training ({plan.long_clients} clients, "
             f"{plan.long_rounds} rounds)", "",
             f"Accuracy in % at evaluated rounds, mean ± sd over seeds; "
             f"the last column says whether round {plan.base.rounds} of "
             f"each run equals the final accuracy of the "
             f"{plan.base.rounds}-round cell run of the same seed (the "
             f"same run, stopped earlier): yes or NO where both ran on "
             f"the same device; yes or differs (other CPU) where "
             f"they ran on different CPU kinds (which round floats "
             f"differently: a difference there is no failure); n/a "
             f"where no cell run is stored.", "", *long_lines, ""]
    results = {"benchmark": "glue_regime", "command": command,
               "plan": asdict(plan), "best_lr": lrs,
               "coverage": coverage, "long_equals_cell": same_as_cell,
               "runs": run_records(plan, store, lrs, chance),
               "versions": {"python": platform.python_version()}}
    return "\n".join(text), results


def run_records(plan: Plan, store: Store, lrs: dict[str, float],
                chance: dict[str, dict[str, float]]
                ) -> list[dict[str, Any]]:
    """Every stored run the report's tables read, once, with the parts
    it serves: its spec, the score a table shows (``score``; per client
    for FedSA-LoRA, ``score_is_per_client``), the chance of its seed's
    test rows, the accuracy curve, the mean aggregation gap and client
    drift, and where it ran; the numbers behind every table, for
    machines."""
    parts: dict[RunSpec, list[str]] = {}
    for part, make in MAKERS:
        for spec in make(plan, lrs):
            parts.setdefault(spec, []).append(part)
    out = []
    for spec, names in parts.items():
        row = store.get(spec)
        if row is None:
            continue
        out.append({
            "parts": names, "key": spec.key, "spec": asdict(spec),
            "score": common.score(row),
            "score_is_per_client": spec.method in common.PERSONAL and
            row.get("final_per_client") is not None,
            "chance": chance.get(spec.task, {}).get(str(spec.seed)),
            "curve": row.get("curve"),
            "aggregation_gap_mean": _gap(row, "aggregation_gap"),
            "client_drift_mean": _gap(row, "client_drift"),
            "device": row.get("device"),
            "resumed_after": row.get("resumed_after"),
        })
    return out


def plot_gaps(plan: Plan, store: Store, lrs: dict[str, float],
              out: Path) -> None:
    """Aggregation gap and client drift over rounds, per method, in the
    cell with the most clients of each task (seed 0)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from _glue_plots import MARKERS  # imports matplotlib itself
    except ImportError:
        return
    clients = max(plan.clients)
    fig, axes = plt.subplots(len(plan.tasks), 2, squeeze=False,
                             figsize=(10, 3.2 * len(plan.tasks)))
    for i, task in enumerate(plan.tasks):
        for method in plan.methods:
            row = store.get(plan.base.with_(task=task, method=method,
                                            clients=clients,
                                            seed=plan.seeds[0],
                                            lr=lrs[method]))
            if row is None:
                continue
            rounds = row.get("gap_rounds", [])
            for j, field in enumerate(("aggregation_gap", "client_drift")):
                points = [(g["round"], g[field]) for g in rounds
                          if g.get(field) is not None]
                if points:
                    # markers and dashes apart: LoRA's and FedEx-LoRA's
                    # drift lie on top of each other
                    k = plan.methods.index(method)
                    axes[i][j].plot([p[0] for p in points],
                                    [p[1] for p in points],
                                    marker=MARKERS[method], ms=3,
                                    linestyle=("-", "--", ":", "-.")[k % 4],
                                    label=method)
        for j, field in enumerate(("aggregation gap (log scale: the exact "
                                   "merges sit at float precision)",
                                   "client drift")):
            axes[i][j].set_title(f"{task}, {clients} clients: {field}",
                                 fontsize=9)
            axes[i][j].set_xlabel("round")
            axes[i][j].grid(alpha=0.3)
            if axes[i][j].get_legend_handles_labels()[0]:
                axes[i][j].legend(fontsize=7)
        if axes[i][0].get_legend_handles_labels()[0]:
            axes[i][0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_long(plan: Plan, store: Store, lrs: dict[str, float],
              out: Path) -> None:
    """Accuracy over rounds of the long runs, one panel per task, one
    line per method and seed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [(s, r) for s in long_specs(plan, lrs) if (r := store.get(s))]
    if not rows:
        return
    fig, axes = plt.subplots(1, len(plan.tasks), squeeze=False,
                             figsize=(5 * len(plan.tasks), 3.4))
    for i, task in enumerate(plan.tasks):
        ax = axes[0][i]
        for spec, row in rows:
            if spec.task != task:
                continue
            metric = row["primary_metric"]
            ax.plot([p["round"] for p in row["curve"]],
                    [100 * p[metric] for p in row["curve"]], marker=".",
                    label=f"{spec.method} (seed {spec.seed})")
        ax.axvline(plan.base.rounds, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{task}, {plan.long_clients} clients")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--methods", default="",
                        help="subset of " + ",".join(METHODS))
    parser.add_argument("--seeds", default="",
                        help="seeds of the cells, e.g. 0,1")
    parser.add_argument("--clients", default="",
                        help="client counts of the cells, e.g. 50")
    parser.add_argument("--tasks", default="",
                        help="tasks of the cells, e.g. mnli,qnli")
    common.add_jobs_argument(parser)
    parser.add_argument("--gpu", action="store_true",
                        help="train on CUDA device 0 (rows record it)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--glue-root", type=Path,
                        default=common.default_glue_root())
    parser.add_argument("--model", default=common.MODEL)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def _listed(text: str, cast: Callable[[str], T]) -> tuple[T, ...]:
    """'0,1' -> (0, 1); ValueError from ``cast`` on a bad value."""
    return tuple(cast(v) for v in text.split(",") if v)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    methods = tuple(m for m in args.methods.split(",") if m) or METHODS
    bad = sorted(set(parts) - set(PARTS)) + sorted(set(methods) -
                                                   set(METHODS))
    if bad:
        print(f"unknown part(s) or method(s) {bad}; parts: {PARTS}, "
              f"methods: {METHODS}", file=sys.stderr)
        return 2
    if not common.jobs_ok(args.jobs):
        return 2
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu: torch sees no CUDA device here", file=sys.stderr)
            return 2
    plan = QUICK if args.quick else FULL
    plan = replace(plan, base=plan.base.with_(model=args.model))
    # the report covers every stored run of the whole plan; --methods,
    # --seeds, --clients and --tasks choose only what runs now
    whole = plan
    plan = replace(plan, methods=methods)
    try:
        if args.seeds:
            plan = replace(plan, seeds=_listed(args.seeds, int))
        if args.clients:
            plan = replace(plan, clients=_listed(args.clients, int))
    except ValueError as err:
        print(f"--seeds and --clients take integers: {err}",
              file=sys.stderr)
        return 2
    if args.tasks:
        plan = replace(plan, tasks=_listed(args.tasks, str))
    from federatedscope_rolora.training.glue import TASKS
    unknown = sorted(set(plan.tasks) - set(TASKS))
    if unknown:
        print(f"unknown task(s) {unknown}; GLUE tasks: {sorted(TASKS)}",
              file=sys.stderr)
        return 2
    h2h_plan = h2h.QUICK if args.quick else h2h.FULL
    h2h_plan = replace(h2h_plan, base=h2h_plan.base.with_(model=args.model))
    stem = "glue_regime_quick" if args.quick else "glue_regime"
    h2h_stem = "glue_quick" if args.quick else "glue"
    status = args.out / f"{stem}_progress.log"
    h2h_store = Store(args.out / f"{h2h_stem}_runs.jsonl")
    lrs = learning_rates(plan, h2h_plan, h2h_store, args.glue_root, status,
                         run=not args.report_only)
    store = Store(args.out / f"{stem}_runs.jsonl")
    if not args.report_only:
        run_parts(plan, parts, lrs, store, args.glue_root, status,
                  args.jobs, args.gpu)
    # and seeds, client counts or tasks given beyond the plan's
    whole = replace(whole,
                    seeds=tuple(dict.fromkeys((*whole.seeds, *plan.seeds))),
                    clients=tuple(dict.fromkeys((*whole.clients,
                                                 *plan.clients))),
                    tasks=tuple(dict.fromkeys((*whole.tasks, *plan.tasks))))
    if whole != plan:
        whole, lrs = known_rates(whole, h2h_plan, h2h_store, args.glue_root)
    command = " ".join(["python benchmarks/glue_regime.py", *argv])
    by_seed = chance(whole, args.glue_root)
    text, results = report(whole, store, lrs, command, by_seed)
    results["chance"] = by_seed
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(text + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1)
                                           + "\n")
    plot_gaps(whole, store, lrs, args.out / f"{stem}_gaps.png")
    plot_long(whole, store, lrs, args.out / f"{stem}_long.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
