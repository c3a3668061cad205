"""Head to head: the same config, data split and seed under each method."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from federatedscope_rolora.config import Config, ConfigError
from federatedscope_rolora.core.methods import METHODS
from federatedscope_rolora.runners.outputs import (
    read_metrics,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from federatedscope_rolora.runners.simulation import RoundCallback, run

COMPARISON_FILE = "comparison.json"
TABLE_FILE = "comparison.md"


def parse_methods(text: str) -> list[str]:
    """``"rolora,lora"`` -> ``["rolora", "lora"]``, validated; ``all``
    is every method."""
    if text.strip() == "all":
        return list(METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {unknown or text!r}; choose "
                          f"from {', '.join(METHODS)}, or all")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"method listed twice in {text!r}")
    return methods


def method_config(cfg: Config, method: str) -> Config:
    """``cfg`` for one method, writing to ``<run_dir>/<method>``."""
    return cfg.replace(federate__method=method,
                       outdir=str(cfg.run_dir / method), expname="")


def compare(cfg: Config, methods: Sequence[str] = METHODS, *,
            on_round: Callable[[str], RoundCallback] | None = None,
            plots: bool = True) -> dict[str, Any]:
    """Run each method and write comparison.json, comparison.md, plots."""
    configs = {m: method_config(cfg, m) for m in methods}
    results: dict[str, Any] = {}
    for method, method_cfg in configs.items():
        callback = on_round(method) if on_round else None
        summary = run(method_cfg, on_round=callback)
        records = read_metrics(method_cfg.run_dir)
        results[method] = _method_result(summary, records)
    out = cfg.run_dir
    comparison = {"task": cfg.task, "model": cfg.model_name,
                  "clients": cfg["federate.client_num"],
                  "rounds": cfg["federate.total_round_num"],
                  "seed": cfg["seed"], "methods": results}
    write_json_atomic(out / COMPARISON_FILE, comparison)
    write_text_atomic(out / TABLE_FILE, markdown_table(comparison) + "\n")
    if plots:
        comparison["plots"] = draw_plots(comparison, out)
        write_json_atomic(out / COMPARISON_FILE, comparison)
    return comparison


def _method_result(summary: dict[str, Any], records: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    primary = summary["primary_metric"]
    uploaded = 0
    curve = []
    for rec in records:
        uploaded += sum(rec["bytes"]["up"].values())
        if "eval" in rec:
            point = {"round": rec["round"], "metric": rec["eval"][primary],
                     "bytes_up_cumulative": uploaded}
            if "eval_per_client" in rec:
                point["metric_per_client"] = \
                    rec["eval_per_client"]["example_weighted"][primary]
            curve.append(point)
    personal: dict[str, Any] = {
        k: summary[k] for k in ("final_per_client", "best_per_client")
        if k in summary}
    gaps = [r.get("aggregation_gap") for r in records]
    return {
        "primary_metric": primary,
        "final": summary["final"], "best": summary["best"], **personal,
        "aggregation_gap": gaps,
        "bytes": summary["bytes"],
        "bytes_up_total": summary["bytes_up_total"],
        "bytes_down_total": summary["bytes_down_total"],
        "wall_seconds": summary["wall_seconds"], "curve": curve,
    }


def _gap_cell(gaps: list[float | None] | None) -> str:
    """Mean aggregation gap over rounds; '-' where undefined."""
    known = [g for g in gaps or [] if g is not None]
    return f"{sum(known) / len(known):.2e}" if known else "-"


def _personal_cell(res: dict[str, Any], metric: str) -> str:
    """Per-client score (example-weighted / plain mean over clients) of
    the final round; '-' when not evaluated."""
    final = res.get("final_per_client")
    if final is None:
        return "-"
    return (f"{final['example_weighted'][metric]:.4f} / "
            f"{final['client_mean'][metric]:.4f}")


def markdown_table(comparison: dict[str, Any]) -> str:
    """One row per method. ``global final`` and ``best`` score the global
    adapter on the whole test set; ``per-client final`` scores each
    client's own model on its own test share (example-weighted / plain
    mean over clients), never mixed with the global number."""
    rows = [
        f"Task {comparison['task']}, model {comparison['model']}, "
        f"{comparison['clients']} clients, {comparison['rounds']} rounds, "
        f"seed {comparison['seed']}.",
        "",
        "| method | global final | global best (round) | per-client "
        "final (weighted / mean) | mean aggregation gap | MB up | "
        "MB down | KB up / round | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in comparison["methods"].items():
        metric = res["primary_metric"]
        rounds = max(1, comparison["rounds"])
        rows.append(
            f"| {method} | {metric} {res['final'][metric]:.4f} | "
            f"{res['best'][metric]:.4f} ({res['best']['round']}) | "
            f"{_personal_cell(res, metric)} | "
            f"{_gap_cell(res.get('aggregation_gap'))} | "
            f"{res['bytes_up_total'] / 1e6:.3f} | "
            f"{res['bytes_down_total'] / 1e6:.3f} | "
            f"{res['bytes_up_total'] / rounds / 1e3:.1f} | "
            f"{res['wall_seconds']:.1f} |")
    return "\n".join(rows)


def draw_plots(comparison: dict[str, Any], out: Path) -> list[str]:
    """Accuracy vs round and vs megabytes uploaded; [] without
    matplotlib (install the ``plot`` extra)."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    # Six methods stay apart in print and for colour-blind readers:
    # each has its own marker and line style as well as its colour.
    styles = dict(zip(METHODS, [("o", "-"), ("s", "--"), ("^", "-."),
                                ("D", ":"), ("v", "-"), ("P", "--")],
                      strict=True))
    for name, x_key, x_label, scale in (
            ("accuracy_vs_round.png", "round", "round", 1.0),
            ("accuracy_vs_upload.png", "bytes_up_cumulative",
             "MB uploaded (all clients)", 1e-6)):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        metric = "metric"
        for method, res in comparison["methods"].items():
            metric = res["primary_metric"]
            xs = [p[x_key] * scale for p in res["curve"]]
            marker, line = styles.get(method, ("o", "-"))
            personal = [p.get("metric_per_client") for p in res["curve"]]
            both = bool(personal) and all(v is not None for v in personal)
            ax.plot(xs, [p["metric"] for p in res["curve"]],
                    marker=marker, linestyle=line,
                    label=f"{method} (global)" if both else method)
            if both:
                ax.plot(xs, personal, marker=marker, linestyle=":",
                        alpha=0.6, label=f"{method} (per client)")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"{comparison['task']}, {comparison['clients']} "
                     "clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
        fig.tight_layout()
        write_atomic(out / name, partial(fig.savefig, dpi=120,
                                         format="png"))
        plt.close(fig)
        written.append(name)
    return written


def load_comparison(run_dir: Path) -> dict[str, Any]:
    with open(run_dir / COMPARISON_FILE, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
