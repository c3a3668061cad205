"""PNG plots of the GLUE benchmarks (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from _common import METHODS, PERSONAL, Store, mean_sd

COLORS = {"rolora": "tab:red", "lora": "tab:blue", "ffa_lora": "tab:green",
          "fedex_lora": "tab:purple", "flexlora": "tab:brown",
          "fedsa_lora": "tab:olive"}
LABELS = {"rolora": "RoLoRA", "lora": "LoRA", "ffa_lora": "FFA-LoRA",
          "fedex_lora": "FedEx-LoRA", "flexlora": "FlexLoRA",
          "fedsa_lora": "FedSA-LoRA (per client)"}
# Six lines stay apart in print: a marker of its own per method.
MARKERS = dict(zip(METHODS, "osD^vP", strict=True))


def _methods(cells: list[dict[str, Any]]) -> list[str]:
    """The methods a table holds, in the usual order."""
    present = {m for c in cells for m in c}
    return [m for m in METHODS if m in present]


def _offset(i: int, count: int) -> float:
    """Position of the i-th of ``count`` side-by-side items, centred."""
    return i - (count - 1) / 2


def _pct(values: dict[str, float]) -> tuple[float, float]:
    """Mean and sd in percent of a cell's scores by seed."""
    mean, sd = mean_sd([v * 100 for v in values.values()])
    return mean, sd


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errorbars(ax: Any, xs: list[float], cells: list[dict[str, Any]],
               offset: float = 0.0) -> None:
    methods = _methods(cells)
    for i, m in enumerate(methods):
        pts = [(x + _offset(i, len(methods)) * offset, *_pct(c[m]))
               for x, c in zip(xs, cells, strict=True) if c.get(m)]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[p[2] for p in pts], marker=MARKERS[m],
                        capsize=3, color=COLORS[m], label=LABELS[m])


def _finish(ax: Any, xlabel: str, title: str) -> None:
    """Labels, grid and legend of a line plot of final accuracy."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _by_clients(ax: Any, by_clients: dict[str, Any], title: str) -> None:
    xs = list(range(len(by_clients)))
    _errorbars(ax, [float(x) for x in xs], list(by_clients.values()), 0.06)
    ax.set_xticks(xs, [str(c) for c in by_clients])
    _finish(ax, "clients (total train examples fixed)", title)


def clients(results: dict[str, Any], plan: Any, path: Path) -> None:
    table = results["clients"]
    fig, axes = plt.subplots(1, len(table), figsize=(4.2 * len(table), 3.6),
                             squeeze=False)
    for ax, (task, by_clients) in zip(axes[0], table.items(), strict=True):
        _by_clients(ax, by_clients, f"{task}, rank {plan.base.rank}")
    _save(fig, path)


def local(results: dict[str, Any], plan: Any, path: Path) -> None:
    sizes = dict(plan.local_sizes)
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    _by_clients(ax, results["local"],
                f"{plan.local_task}, {sizes.get('local_epochs', 1)} local "
                f"epochs, {sizes.get('rounds', plan.base.rounds)} rounds")
    _save(fig, path)


def _bars(ax: Any, table: dict[str, dict[str, dict[str, float]]],
          labels: list[str]) -> None:
    """One group of bars (mean, sd) per row of ``table``."""
    xs = list(range(len(table)))
    methods = _methods(list(table.values()))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        stats = [_pct(c[m]) if c.get(m) else (0.0, 0.0)
                 for c in table.values()]
        ax.bar([x + _offset(i, len(methods)) * width for x in xs],
               [s[0] for s in stats],
               width, yerr=[s[1] for s in stats], capsize=3,
               color=COLORS[m], label=LABELS[m])
    ax.set_xticks(xs, labels)
    done = [_pct(v)[0] for c in table.values() for v in c.values() if v]
    if done:
        ax.set_ylim(max(0.0, min(done) - 10), None)
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def pairs(results: dict[str, Any], plan: Any, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    _bars(ax, results["pairs"], list(results["pairs"]))
    ax.set_title(f"sentence pairs, {plan.few} clients")
    _save(fig, path)


def skew(results: dict[str, Any], plan: Any, path: Path) -> None:
    table = results["skew"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _bars(ax, table, [s if s == "iid" else f"alpha {s}" for s in table])
    ax.set_title(f"{plan.skew_task}, {plan.skew_clients} clients, "
                 "Dirichlet label skew")
    _save(fig, path)


def rank(results: dict[str, Any], plan: Any, path: Path) -> None:
    table = results["rank"]
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    xs = [float(r) for r in table]
    _errorbars(ax, xs, list(table.values()), 0.03 * max(xs))
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(int(x)) for x in xs])
    _finish(ax, "LoRA rank", f"{plan.rank_task}, {plan.few} clients")
    _save(fig, path)


def lr_grid(results: dict[str, Any], plan: Any, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for m, row in results["lr_grid"].items():
        pts = [(float(lr), v["0"] * 100) for lr, v in row.items() if v]
        ax.plot([p[0] for p in pts], [p[1] for p in pts],
                marker=MARKERS[m], color=COLORS[m], label=LABELS[m])
    ax.set_xscale("log")
    _finish(ax, "learning rate (AdamW)",
            f"{plan.lr_task}, {plan.few} clients, seed 0")
    _save(fig, path)


def comm(results: dict[str, Any], plan: Any, path: Path) -> None:
    """Upload per client in rounds 1-3, stacked by role, at the first
    rank, the fewest clients and frozen head."""
    rank0 = plan.comm_ranks[0]
    few = min(r.get("clients", 0) for r in results["comm"])
    rows = [r for r in results["comm"] if r["rank"] == rank0
            and r["head"] == "frozen" and r.get("clients", 0) == few]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    rounds = sorted({r["round"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    width = 0.8 / max(1, len(methods))
    role_color = {"lora_A": "tab:orange", "lora_B": "tab:purple",
                  "head": "tab:gray"}
    seen: set[str] = set()
    for i, m in enumerate(methods):
        shift = _offset(i, len(methods)) * width
        for r in (x for x in rows if x["method"] == m):
            bottom = 0.0
            for role, size in sorted(r["per_client"]["up"].items()):
                kb = size / 1e3
                ax.bar(r["round"] + shift, kb, width,
                       bottom=bottom, color=role_color[role],
                       edgecolor=COLORS[m], linewidth=2,
                       label=role if role not in seen else None)
                seen.add(role)
                bottom += kb
            ax.text(r["round"] + shift, bottom, LABELS[m].split()[0],
                    ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(rounds, [f"round {t}" for t in rounds])
    ax.set_ylabel("KB uploaded per client")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.set_title(f"Upload per client and round, rank {rank0} "
                 "(edge colour: method)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


def curves(results: dict[str, Any], plan: Any, store: Store,
           path: Path) -> None:
    """Mean accuracy vs round and vs MB uploaded, per task and client
    count, at the chosen learning rates. The curves are the global
    adapter's, so a personalised method (FedSA-LoRA, scored per client
    only at the end) is left out rather than mixed in."""
    tasks, counts = plan.tasks, plan.clients
    fig, axes = plt.subplots(2 * len(tasks), len(counts),
                             figsize=(3.8 * len(counts), 5.6 * len(tasks)),
                             squeeze=False, sharey="row")
    lrs = results["best_lr"]
    for ti, task in enumerate(tasks):
        for ci, c in enumerate(counts):
            for m in (m for m in plan.methods if m not in PERSONAL):
                rows = [store.get(plan.spec(task, method=m, clients=c,
                                            seed=s, lr=lrs[m]))
                        for s in plan.seeds]
                got = [r for r in rows if r is not None]
                if not got:
                    continue
                xs, mb, ys = _mean_curve(got)
                for row_i, x in ((2 * ti, xs), (2 * ti + 1, mb)):
                    axes[row_i][ci].plot(x, ys, marker=MARKERS[m], ms=3,
                                         color=COLORS[m], label=LABELS[m])
            for row_i, xl in ((2 * ti, "round"),
                              (2 * ti + 1, "MB uploaded (all clients)")):
                ax = axes[row_i][ci]
                ax.set_xlabel(xl)
                ax.set_ylabel("test accuracy (%)")
                ax.set_title(f"{task}, {c} clients")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
    _save(fig, path)


def _mean_curve(rows: list[dict[str, Any]]
                ) -> tuple[list[int], list[float], list[float]]:
    """Rounds, cumulative MB uploaded and mean accuracy at each eval."""
    first = rows[0]
    metric = first["primary_metric"]
    rounds = [p["round"] for p in first["curve"]]
    up, cumulative = 0, {}
    for rec in first["bytes_rounds"]:
        up += sum(rec["up"].values())
        cumulative[rec["round"]] = up / 1e6
    ys = [mean_sd([r["curve"][i][metric] * 100 for r in rows])[0]
          for i in range(len(rounds))]
    return rounds, [cumulative[t] for t in rounds], ys
