"""Tables, markdown and plots of the GLUE benchmarks, from the run store.

The paper's numbers (RoBERTa-Large, arXiv 2409.02346 v1) sit beside ours
so that every table shows where the two agree and where they do not.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from _common import Store, cell, label, mean_sd, paired_points, score

PAPER_TASKS = ("sst2", "qnli", "mnli", "qqp", "rte")
# Table 2: rank 2, LoRA on query/value of layers 15-23, total samples fixed.
PAPER_T2: dict[int, dict[str, tuple[float, ...]]] = {
    3: {"lora": (95.64, 92.04, 85.85, 86.16, 82.19),
        "ffa_lora": (94.91, 90.11, 84.06, 85.48, 80.86),
        "rolora": (95.60, 91.62, 85.66, 86.16, 82.19)},
    20: {"lora": (94.27, 86.91, 81.22, 82.07, 46.21),
         "ffa_lora": (93.92, 89.58, 80.51, 82.62, 57.76),
         "rolora": (94.84, 90.77, 85.13, 85.10, 81.23)},
    50: {"lora": (93.23, 82.57, 58.96, 76.96, 49.10),
         "ffa_lora": (92.32, 85.15, 62.79, 77.78, 53.07),
         "rolora": (94.61, 89.83, 85.15, 85.55, 72.92)},
}
# Table 1: 3 clients, mean over the five tasks, by rank.
PAPER_T1: dict[str, dict[int, float]] = {
    "lora": {8: 88.07, 4: 88.20, 2: 88.38, 1: 87.40},
    "ffa_lora": {8: 87.44, 4: 87.48, 2: 87.08, 1: 86.21},
    "rolora": {8: 88.06, 4: 88.28, 2: 88.22, 1: 87.33},
}
LABELS = {"rolora": "RoLoRA", "lora": "LoRA", "ffa_lora": "FFA-LoRA",
          "fedex_lora": "FedEx-LoRA", "flexlora": "FlexLoRA",
          "fedsa_lora": "FedSA-LoRA"}
# What the other methods' papers report, to set beside our cells (the
# numbers quoted in issue 10; their setups differ from ours and from
# 2409.02346's, so they are context, not a column).
PAPER_OTHERS = [
    "FlexLoRA collapses at 50 clients in RoLoRA's extended version "
    "(arXiv 2502.01755, rank 4): 54.67 on average over its tasks, 54.08 "
    "on SST-2.",
    "FedEx-LoRA (arXiv 2410.09432) reports a gain over plain federated "
    "LoRA; FedSA-LoRA (arXiv 2410.01463) a gain over FFA-LoRA.",
    "FedSA-LoRA's cells are per-client scores (each client's own B on its "
    "own test share, example-weighted), the other methods' the global "
    "adapter's on the whole test set.",
]


def paper_t2(clients: int, method: str, task: str) -> float | None:
    """Table 2 of 2409.02346 (None for a method or task it lacks)."""
    if clients not in PAPER_T2 or task not in PAPER_TASKS or \
            method not in PAPER_T2[clients]:
        return None
    return PAPER_T2[clients][method][PAPER_TASKS.index(task)]


# One cell of a table: each stored run's score, keyed by its seed (a
# string, as JSON keeps it). A seed that has not run is absent, so a
# cell says which seeds its mean is over.
Seeds = dict[str, float]


def _values(store: Store, specs: list[Any]) -> Seeds:
    rows = [store.get(s) for s in specs]
    return {str(r["spec"]["seed"]): score(r) for r in rows if r is not None}


def _cell(values: Seeds) -> str:
    return cell(list(values.values()))


def _seed_list(seeds: Any) -> str:
    return ", ".join(f"s{s}" for s in sorted(seeds, key=int))


def _sizes(store: Store, specs: list[Any]) -> dict[str, list[int]]:
    """Smallest and largest client (examples), per seed."""
    rows = [r for r in (store.get(s) for s in specs) if r is not None]
    return {str(r["spec"]["seed"]): [r["client_examples_min"],
                                     r["client_examples_max"]]
            for r in rows}


def tables(plan: Any, store: Store, lrs: dict[str, float],
           benches: list[str]) -> dict[str, Any]:
    """Final metrics per cell (one value per seed), for JSON and text."""
    out: dict[str, Any] = {}
    if "lr" in benches or lrs:
        out["lr_grid"] = {m: {f"{lr:g}": _values(store, [plan.spec(
            plan.lr_task, method=m, lr=lr, clients=plan.few,
            seed=0)]) for lr in plan.lr_grid} for m in plan.methods}
    if not lrs:
        return out
    if "clients" in benches:
        out["clients"] = {t: {str(c): {m: _values(store, [plan.spec(
            t, method=m, clients=c, seed=s, lr=lrs[m])
            for s in plan.seeds]) for m in plan.methods}
            for c in plan.clients} for t in plan.tasks}
    if "skew" in benches:
        out["skew"] = {f"{a:g}" if a else "iid": {m: _values(store, [
            plan.spec(plan.skew_task, method=m, seed=s, lr=lrs[m],
                       clients=plan.skew_clients, alpha=a)
            for s in plan.skew_seeds]) for m in plan.base_methods}
            for a in (0.0, *plan.alphas)}
        out["skew_client_sizes"] = {
            f"{a:g}" if a else "iid": _sizes(store, [plan.spec(
                plan.skew_task, method=plan.base_methods[0], seed=s,
                lr=lrs[plan.base_methods[0]], clients=plan.skew_clients,
                alpha=a)
                for s in plan.skew_seeds]) for a in (0.0, *plan.alphas)}
    if "rank" in benches:
        out["rank"] = {str(r): {m: _values(store, [plan.spec(
            plan.rank_task, method=m, clients=plan.few,
            seed=s, lr=lrs[m], rank=r) for s in plan.rank_seeds])
            for m in plan.methods} for r in plan.ranks}
    if "local" in benches:
        out["local"] = {str(c): {m: _values(store, [
            plan.local_spec(m, c, s, lrs[m]) for s in plan.local_seeds])
            for m in plan.methods} for c in plan.local_clients}
    if "pairs" in benches:
        out["pairs"] = {t: {m: _values(store, [
            plan.pair_spec(t, m, s, lrs[m]) for s in plan.pair_seeds])
            for m in plan.base_methods} for t in plan.pair_tasks}
    return out


def ordering(cells: dict[str, Seeds]) -> str:
    """'rolora 84.1 > lora 83.0 > ffa_lora 80.2' by mean, over the
    methods that have every seed any method of the cell has. A method
    missing one is listed after, unranked: the seeds of a cell share
    their split and initialisation, so means over different seeds do
    not compare (with the missing seed in, the order can turn), even
    when they are as many (seeds 0-1 against 0 and 2)."""
    done = {m: v for m, v in cells.items() if v}
    every = set().union(*done.values()) if done else set()
    means = {m: round(mean_sd(list(v.values()))[0] * 100, 1)
             for m, v in done.items()}
    ranked = sorted((m for m in done if set(done[m]) == every),
                    key=lambda m: -means[m])
    text = [f"{label(ranked[0])} {means[ranked[0]]:.1f}"] if ranked else []
    for prev, m in itertools.pairwise(ranked):
        sign = "=" if means[m] == means[prev] else ">"
        text.append(f"{sign} {label(m)} {means[m]:.1f}")
    fewer = [f"{label(m)} {means[m]:.1f} ({_seed_list(v)} of "
             f"{_seed_list(every)})"
             for m, v in done.items() if set(v) != every]
    if fewer:
        if text:
            text[-1] += ";"
        text.append("not ranked, missing seeds: " + ", ".join(fewer))
    return " ".join(text)


def paired(cells: dict[str, Seeds], baseline: str = "lora") -> str:
    """'rolora +0.2 ± 1.2 (ahead at 1 of 3 seeds)': each method's score
    minus ``baseline``'s at the same seed, in points, over the seeds both
    ran (the runs of a seed share the split and the initial adapter)."""
    base = cells.get(baseline, {})
    parts = []
    for m, v in cells.items():
        diffs = paired_points(v, base)
        if m == baseline or not diffs:
            continue
        mean, sd = mean_sd(diffs)
        spread = f" ± {sd:.1f}" if len(diffs) > 1 else ""
        parts.append(f"{label(m)} {mean:+.1f}{spread} (ahead at "
                     f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds)")
    return ", ".join(parts)


def markdown(results: dict[str, Any], plan: Any) -> str:
    base = plan.base
    lines = [
        "# GLUE head to head: RoLoRA vs LoRA vs FFA-LoRA (and FedEx-LoRA, "
        "FlexLoRA, FedSA-LoRA)", "",
        f"Command: `{results['command']}`", "",
        f"Protocol: {base.model}, LoRA r={base.rank} (unless stated), "
        f"lora_alpha {base.lora_alpha}, query/value of every layer, head "
        f"{base.head}; {base.train_samples} train examples in total over "
        f"all clients, {base.local_epochs} local epoch(s) per round, batch "
        f"{base.batch_size}, AdamW, {base.rounds} rounds, tok_len "
        f"{base.tok_len}; metric on {base.eval_samples or 'all'} test rows "
        f"(GLUE dev{_big_eval_text(plan)}), evaluated every "
        f"{base.eval_every} rounds and after the last. Cells: final metric "
        "in %, mean ± sd over seeds (n seeds). "
        "Chance (the majority label's share of the test rows a seed "
        "scores on): " + ", ".join(
            f"{t} {_chance_text(v)}" for t, v in results.get(
                "chance", {}).items()) + ".",
        "",
    ]
    if results.get("coverage"):
        lines += _coverage_md(results["coverage"])
    if results.get("comm"):
        lines += _comm_md(results["comm"])
    if "lr_grid" in results:
        lines += ["## Learning-rate grid", "",
                  f"Task {plan.lr_task}, {plan.few} clients, seed "
                  "0; final metric in %. Best per method (used "
                  "everywhere): " + ", ".join(
                      f"{m} {lr:g}" for m, lr in results["best_lr"].items()),
                  "", "| method | " + " | ".join(
                      f"lr {lr:g}" for lr in plan.lr_grid) + " |",
                  "|---" * (len(plan.lr_grid) + 1) + "|"]
        for m, row in results["lr_grid"].items():
            lines.append(f"| {m} | " + " | ".join(
                _cell(v) for v in row.values()) + " |")
        lines.append("")
    if "clients" in results:
        lines += _clients_md(results["clients"])
    if "local" in results:
        lines += _local_md(results, plan)
    if "pairs" in results:
        lines += _pairs_md(results["pairs"], plan, results.get("chance", {}))
    if "rank" in results:
        lines += [f"## Rank ({plan.rank_task}, {plan.few} "
                  "clients)", "",
                  "Paper column: Table 1, mean over 5 tasks, RoBERTa-Large.",
                  "", "| rank | method | ours | paper (5-task mean) |",
                  "|---|---|---|---|"]
        for r, cells in results["rank"].items():
            for m, v in cells.items():
                paper = PAPER_T1.get(m, {}).get(int(r))
                lines.append(f"| {r} | {label(m)} | {_cell(v)} | "
                             f"{f'{paper:.2f}' if paper else 'n/a'} |")
        lines.append("")
    if "skew" in results:
        lines += [f"## Label skew ({plan.skew_task}, {plan.skew_clients} "
                  "clients, Dirichlet alpha)", "",
                  "Client sizes: smallest-largest client (examples) per "
                  "seed; the split is the same for every method.", "",
                  "| split | method | ours | per seed | client sizes |",
                  "|---|---|---|---|---|"]
        sizes = results.get("skew_client_sizes", {})
        for key, cells in results["skew"].items():
            split = key if key == "iid" else f"alpha {key}"
            span = "; ".join(f"s{k}: {lo}-{hi}" for k, (lo, hi) in
                             sizes.get(key, {}).items())
            for m, v in cells.items():
                lines.append(f"| {split} | {label(m)} | {_cell(v)} | "
                             f"{_per_seed(v)} | {span} |")
        lines += ["", "Ordering by mean:", ""] + [
            f"- {k if k == 'iid' else 'alpha ' + k}: {ordering(cells)}"
            for k, cells in results["skew"].items()]
        lines.append("")
    return "\n".join(lines)


def _clients_md(table: dict[str, Any]) -> list[str]:
    tasks = list(table)
    lines = ["## More clients, total samples fixed (Table 2 question)", "",
             "| clients | method | " + " | ".join(
                 f"{t} ours | {t} paper" for t in tasks) + " |",
             "|---|---|" + "---|---|" * len(tasks)]
    for c, by_method in next(iter(table.values())).items():
        for m in by_method:
            cells = []
            for t in tasks:
                paper = paper_t2(int(c), m, t)
                cells += [_cell(table[t][c][m]),
                          f"{paper:.2f}" if paper else "n/a"]
            lines.append(f"| {c} | {label(m)} | " + " | ".join(cells) +
                         " |")
    lines += ["", "The other methods' papers:", ""]
    lines += [f"- {text}" for text in PAPER_OTHERS]
    lines += ["", "Ordering by mean:", ""]
    for t in tasks:
        for c, cells in table[t].items():
            lines.append(f"- {t}, {c} clients: {ordering(cells)}")
    return lines + [""]


def _coverage_md(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Runs", "",
             "Runs each benchmark needs, how many are in the store, and "
             "their run time (one torch thread each). 'all' counts a run "
             "shared by two benchmarks once. A cell of a table whose runs "
             "are missing shows fewer seeds or 'n/a'. Under way: runs "
             "running, or stopped and continued from their checkpoint by "
             "the next run of the suite, as rounds written / planned.", "",
             "| benchmark | planned | done | under way | run hours |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {c['planned']} | {c['done']} | "
              f"{', '.join(c.get('under_way', {}).values()) or '—'} | "
              f"{c['run_hours']} |" for name, c in table.items()]
    return lines + [""]


def _big_eval_text(plan: Any) -> str:
    """Where the large dev sets are subsampled (``plan.spec``), say so."""
    if plan.base.eval_samples:
        return ""
    return f"; QNLI, MNLI, QQP: {plan.big_eval} seeded rows"


def _sizes_text(sizes: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sizes)


def _chance_text(by_seed: Seeds, unit: str = "%") -> str:
    """'50.92%' where every seed scores on the same rows, else
    's0 51.50%, s1 54.10%': each seed draws its own subsample."""
    shares = set(by_seed.values())
    if len(shares) == 1:
        return f"{shares.pop() * 100:.2f}{unit}"
    return ", ".join(f"s{s} {by_seed[s] * 100:.2f}{unit}"
                     for s in sorted(by_seed, key=int))


def _per_seed(values: Seeds) -> str:
    """'s0 70.0, s1 72.6': each seed's score, named."""
    return ", ".join(f"s{s} {values[s] * 100:.1f}"
                     for s in sorted(values, key=int)) or "not run"


def _local_md(results: dict[str, Any], plan: Any) -> list[str]:
    """More local work at many clients, beside the one-epoch numbers of
    the ``clients`` benchmark where those ran."""
    task = plan.local_task
    one_epoch = results.get("clients", {}).get(task, {})
    lines = [f"## More clients, more local work ({task}; "
             f"{_sizes_text(plan.local_sizes)})", "",
             "The clients question again, with each client doing several "
             "local epochs a round so that every method can leave chance. "
             "'1 epoch' is the clients benchmark's cell "
             f"({plan.base.rounds} rounds), where it ran.", "",
             "| clients | method | ours | per seed | 1 epoch (ours) | "
             "paper |", "|---|---|---|---|---|---|"]
    for c, cells in results["local"].items():
        for m, v in cells.items():
            paper = paper_t2(int(c), m, task)
            base = one_epoch.get(c, {}).get(m, {})
            lines.append(f"| {c} | {label(m)} | {_cell(v)} | {_per_seed(v)} | "
                         f"{_cell(base)} | "
                         f"{f'{paper:.2f}' if paper else 'n/a'} |")
    lines += ["", "Ordering by mean:", ""] + [
        f"- {c} clients: {ordering(cells) or 'not run'}"
        for c, cells in results["local"].items()]
    lines += ["", "Paired with LoRA seed by seed (points):", ""] + [
        f"- {c} clients: {paired(cells) or 'not run'}"
        for c, cells in results["local"].items()]
    return lines + [""]


def _pairs_md(table: dict[str, Any], plan: Any,
              chance: dict[str, Seeds]) -> list[str]:
    lines = [f"## Sentence-pair tasks, {plan.few} clients "
             f"({_sizes_text(plan.pair_sizes)})", "",
             "Each method at the learning rate the grid chose on "
             f"{plan.lr_task} (not re-tuned per task). Test rows: "
             f"{plan.big_eval} seeded rows of the GLUE dev set. QNLI trains "
             "on the local train subset; MNLI, whose local copy has no "
             "train split, trains on dev_mismatched and is tested on "
             "dev_matched (disjoint).", "",
             "| task | method | ours | per seed | chance | paper (Table 2) |",
             "|---|---|---|---|---|---|"]
    for t, cells in table.items():
        floor = _chance_text(chance[t], "") if t in chance else "n/a"
        for m, v in cells.items():
            paper = paper_t2(plan.few, m, t)
            lines.append(f"| {t} | {label(m)} | {_cell(v)} | {_per_seed(v)} | "
                         f"{floor} | {f'{paper:.2f}' if paper else 'n/a'} |")
    lines += ["", "Ordering by mean:", ""] + [
        f"- {t}: {ordering(cells) or 'not run'}"
        for t, cells in table.items()]
    return lines + [""]


def _comm_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Communication per client and round (bytes)", "",
             "Measured by the runner's ledger and asserted equal to the "
             "count from the model's shapes (float32; A = r x hidden and "
             "B = hidden x r per adapted module). FedEx-LoRA's residual "
             "(down, from round 2) is last round's increment in its "
             "smaller exact form: (n-1)·r·2·hidden values per module from "
             "n clients, or hidden² once that is smaller, so it grows with "
             "the client count.", "",
             "| clients | method | rank | head | round | up (by role) | "
             "up total | down (residual) | down total | = analytic | "
             "up vs LoRA |", "|---" * 11 + "|"]
    lora_up = {(r.get("clients"), r["rank"], r["round"]):
               sum(r["per_client"]["up"].values())
               for r in rows if r["method"] == "lora"}
    for r in rows:
        up, down = r["per_client"]["up"], r["per_client"]["down"]
        total = sum(up.values())
        ref = lora_up.get((r.get("clients"), r["rank"], r["round"]))
        ratio = f"{total / ref:.2f}" if ref else "n/a"
        roles = ", ".join(f"{k} {v}" for k, v in sorted(up.items()))
        lines.append(
            f"| {r.get('clients', 'n/a')} | {r['method']} | {r['rank']} | "
            f"{r['head']} | {r['round']} | {roles} | {total} | "
            f"{down.get('residual', '-')} | {sum(down.values())} "
            f"| {r['per_client'] == r['analytic']} | {ratio} |")
    return lines + [""]


def _has_numbers(table: Any) -> bool:
    """A non-empty list anywhere inside ``table`` (a suite stopped early
    leaves cells empty; a table with no run has nothing to draw)."""
    if isinstance(table, dict):
        return any(_has_numbers(v) for v in table.values())
    if isinstance(table, float):
        return True
    return bool(table)


def plots(results: dict[str, Any], plan: Any, store: Store, out: Path,
          stem: str) -> list[str]:
    """One PNG per benchmark that has numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import _glue_plots as gp

    written = []
    for name, draw in (("clients", gp.clients), ("skew", gp.skew),
                       ("rank", gp.rank), ("lr_grid", gp.lr_grid),
                       ("comm", gp.comm), ("local", gp.local),
                       ("pairs", gp.pairs)):
        if _has_numbers(results.get(name)):
            path = out / f"{stem}_{name}.png"
            draw(results, plan, path)
            written.append(path.name)
    if results.get("clients"):
        path = out / f"{stem}_curves.png"
        gp.curves(results, plan, store, path)
        written.append(path.name)
    return written
