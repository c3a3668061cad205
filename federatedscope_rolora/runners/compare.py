"""Head to head: the same config, data split and seed under each method."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from federatedscope_rolora.config import Config, ConfigError, load_config
from federatedscope_rolora.core.methods import METHODS
from federatedscope_rolora.runners.checkpoint import resume_point
from federatedscope_rolora.runners.outputs import (
    CONFIG_FILE,
    OutdirError,
    RunDirLock,
    check_outdir,
    holds_run,
    read_metrics_head,
    read_summary,
    refuse_existing_run,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from federatedscope_rolora.runners.setup import (
    check_method_fits,
    data_digests,
    model_digest,
)
from federatedscope_rolora.runners.simulation import (
    RoundCallback,
    check_same_data,
    check_same_model,
    resume_checks,
    run,
)

log = logging.getLogger("federatedscope_rolora")

PLOT_FILES = ("accuracy_vs_round.png", "accuracy_vs_upload.png")

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


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``, validated as the ``seed`` key is."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers, got "
                          f"{text!r}") from None
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if not seeds or bad:
        raise ConfigError(f"--seeds: each seed must be in [0, 2**32), got "
                          f"{text!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed listed twice in {text!r}")
    return seeds


def method_config(cfg: Config, method: str, seed: int | None = None
                  ) -> Config:
    """``cfg`` for one method, writing to ``<run_dir>/<method>``; with
    ``seed``, that seed's run, in ``<run_dir>/<method>/seed<seed>``."""
    out = cfg.run_dir / method
    if seed is None:
        return cfg.replace(federate__method=method, outdir=str(out),
                           expname="")
    return cfg.replace(federate__method=method, seed=seed,
                       outdir=str(out / f"seed{seed}"), expname="")


def compare(cfg: Config, methods: Sequence[str] = METHODS, *,
            seeds: Sequence[int] | None = None, resume: bool = False,
            on_round: Callable[[str], RoundCallback] | None = None,
            plots: bool = True) -> dict[str, Any]:
    """Run each method (at each of ``seeds``, default the config's) and
    write comparison.json, comparison.md, plots. With ``resume``, a run
    already in the outdir is continued from its checkpoint, or read back
    if it finished under the same config, so a stopped comparison picks
    up where it stopped."""
    seeds = list(seeds) if seeds else [cfg["seed"]]
    several = len(seeds) > 1
    if not several:  # one seed: the usual layout, under that seed
        cfg = cfg.replace(seed=seeds[0])
    runs = {(method, seed): _seed_run(cfg, method, seed, several, resume)
            for method in methods for seed in seeds}
    _check_outdirs(runs.values(), resume)
    _check_earlier_comparison(cfg.run_dir, resume, methods, seeds)
    for method in methods:   # before any run: no method runs in vain
        check_method_fits(runs[method, seeds[0]])
    if several:   # each seed deals its own split (lda: it may not)
        for seed in seeds[1:]:
            data_digests(runs[methods[0], seed])
    results: dict[str, Any] = {}
    for method in methods:
        callback = on_round(method) if on_round else None
        per_seed = {}
        for seed in seeds:
            run_cfg = runs[method, seed]
            summary = _run_or_continue(run_cfg, resume, callback)
            per_seed[seed] = _method_result(summary, read_metrics_head(
                run_cfg.run_dir, summary["rounds"]))
        results[method] = _over_seeds(per_seed) if several \
            else per_seed[seeds[0]]
    out = cfg.run_dir
    comparison = {"task": cfg.task, "model": cfg.model_name,
                  "clients": cfg["federate.client_num"],
                  "rounds": cfg["federate.total_round_num"],
                  "seed": seeds[0], "seeds": seeds, "methods": results}
    if several and len(methods) > 1:
        comparison["paired"] = paired_by_seed(results, methods[0])
    write_json_atomic(out / COMPARISON_FILE, comparison)
    write_text_atomic(out / TABLE_FILE, markdown_table(comparison) + "\n")
    if plots:
        comparison["plots"] = draw_plots(comparison, out)
        write_json_atomic(out / COMPARISON_FILE, comparison)
    else:   # an earlier comparison's would show other runs
        for name in PLOT_FILES:
            (out / name).unlink(missing_ok=True)
    return comparison


def _seed_run(cfg: Config, method: str, seed: int, several: bool,
              resume: bool) -> Config:
    """Where ``method``'s run at ``seed`` goes: ``<method>/seed<seed>``
    among several seeds, ``<method>`` for one. With ``resume``, a run of
    that seed left in the other layout (by a comparison with one seed,
    or with several) is used where it is, not run again."""
    planned = method_config(cfg, method, seed if several else None)
    if not resume:
        return planned
    other = method_config(cfg.replace(seed=seed), method, None) \
        if several else method_config(cfg, method, seed)
    for found in (planned, other):
        if holds_run(found.run_dir) and _saved_seed(found.run_dir) == seed:
            if found is other:
                log.info("%s: the seed-%d run of an earlier comparison, "
                         "used in place", found.run_dir, seed)
            return found
    return planned


def _saved_seed(run_dir: Path) -> int | None:
    """The seed in a run's config.yaml; None if it cannot be read (the
    run is then not taken for anything)."""
    try:
        return int(load_config(run_dir / CONFIG_FILE)["seed"])
    except (ConfigError, OSError, KeyError, TypeError, ValueError):
        return None


def _check_earlier_comparison(out: Path, resume: bool,
                              methods: Sequence[str], seeds: Sequence[int]
                              ) -> None:
    """OutdirError, before any run, if ``out`` holds an earlier
    comparison and this one does not continue it (``resume``) or, with
    ``resume``, leaves out some of its methods or seeds: its table would
    be replaced by one of other methods or seeds, without a word."""
    path = out / COMPARISON_FILE
    if not path.exists():
        return
    try:
        earlier = load_comparison(out)
        had = (list(earlier["methods"]), [int(s) for s in earlier["seeds"]])
    except (OSError, ValueError, KeyError, TypeError):
        had = None
    what = "" if had is None else \
        f" of {', '.join(had[0])} at seeds {', '.join(map(str, had[1]))}"
    if not resume:
        raise OutdirError(f"outdir {str(out)!r} holds an earlier comparison"
                          f"{what} ({COMPARISON_FILE}); continue or extend "
                          "it with --resume, or give another outdir")
    left = [] if had is None else \
        [m for m in had[0] if m not in methods] + \
        [f"seed {s}" for s in had[1] if s not in seeds]
    if left:
        raise OutdirError(f"outdir {str(out)!r} holds an earlier comparison"
                          f"{what}; --resume continues or extends it, and "
                          f"this one leaves out {', '.join(left)}: give "
                          "them too (their runs are read back), or another "
                          "outdir")


def _check_outdirs(configs: Iterable[Config], resume: bool) -> None:
    """Before any run starts: OutdirError if a run's outdir holds a run
    already (without ``resume``) or cannot be written, CheckpointError
    if one cannot be continued (with ``resume``: its config, metrics
    lines, data or model are not the ones it ran under); else a run
    listed before it would run in full before the comparison stopped at
    it, and a finished one, read back, would sit in one table beside
    runs on other data or another model."""
    digests: dict[str, dict[str, str]] = {}   # the methods share data
    models: dict[str, str] = {}               # and the model
    for run_cfg in configs:
        if not holds_run(run_cfg.run_dir):
            check_outdir(run_cfg.run_dir)
            continue
        if not resume:
            refuse_existing_run(run_cfg.run_dir)
        check_outdir(run_cfg.run_dir)
        ckpt, _ = resume_checks(run_cfg)
        if ckpt is None:
            continue
        shared = json.dumps({k: run_cfg[k] for k in run_cfg if k not in
                             ("federate.method", "outdir", "expname")},
                            sort_keys=True, default=str)
        if shared not in digests:
            digests[shared] = data_digests(run_cfg)
        check_same_data(run_cfg, ckpt, digests[shared])
        if ckpt.model:
            if shared not in models:
                models[shared] = model_digest(run_cfg)
            check_same_model(run_cfg, ckpt, models[shared])


def _readable(run_dir: Path, summary: dict[str, Any]) -> bool:
    """Whether a finished run's summary and metrics give its row of the
    comparison; if not (edited, damaged), the resumed run writes them
    again from its checkpoint."""
    try:
        _method_result(summary, read_metrics_head(run_dir,
                                                  summary["rounds"]))
    except (KeyError, TypeError, ValueError, OutdirError):
        return False
    return True


def _run_or_continue(cfg: Config, resume: bool,
                     callback: RoundCallback | None) -> dict[str, Any]:
    """Run ``cfg``; with ``resume`` and a run in its outdir, continue it,
    or return its summary if it finished under this very config."""
    if not (resume and holds_run(cfg.run_dir)):
        return run(cfg, on_round=callback)
    # read under the run's lock: a `run --resume` going on in the
    # member (more rounds) would be read back half-written
    lock = RunDirLock(cfg.run_dir)
    lock.acquire()   # OutdirError if another process is writing it
    try:
        ckpt = resume_point(cfg)  # CheckpointError if the config differs
        total = cfg["federate.total_round_num"]
        if ckpt is not None and ckpt.round_idx == total:
            # missing or damaged: the resumed run writes it again
            summary = read_summary(cfg.run_dir)
            if summary is not None and summary.get("rounds") == total \
                    and _readable(cfg.run_dir, summary):
                log.info("%s: finished already, read back", cfg.run_dir)
                return summary
    finally:
        lock.release()   # run() takes its own
    return run(cfg, on_round=callback, resume=True)


def _over_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method's results at several seeds: each seed's, and their mean
    (``final``, ``final_per_client``, the curve, the gap per round,
    bytes) with the spread of the final score (``final_sd``, the curve's
    ``metric_min`` / ``metric_max``); wall time summed."""
    runs = list(per_seed.values())
    first = runs[0]
    metric = first["primary_metric"]
    finals = [r["final"][metric] for r in runs]
    out: dict[str, Any] = {
        "primary_metric": metric,
        "final": {k: fmean([r["final"][k] for r in runs])
                  for k in first["final"]},
        "final_sd": {metric: stdev(finals)},
        "final_per_seed": {metric: finals},
        "aggregation_gap": [_mean_known(g) for g in
                            zip(*(r["aggregation_gap"] for r in runs),
                                strict=True)],
        "bytes_up_total": fmean([r["bytes_up_total"] for r in runs]),
        "bytes_down_total": fmean([r["bytes_down_total"] for r in runs]),
        "wall_seconds": sum(r["wall_seconds"] for r in runs),
        "curve": _mean_curve([r["curve"] for r in runs]),
        "seeds": {str(seed): r for seed, r in per_seed.items()},
    }
    if all("final_per_client" in r for r in runs):
        out["final_per_client"] = {
            form: {k: fmean([r["final_per_client"][form][k] for r in runs])
                   for k in first["final_per_client"][form]}
            for form in ("example_weighted", "client_mean")}
    return out


def paired_by_seed(results: dict[str, Any], reference: str
                   ) -> dict[str, Any]:
    """Each method's final score minus ``reference``'s, seed by seed:
    the runs of one seed share the split and the initial adapter, so
    their difference leaves out what the seeds change for every method
    alike, and its spread is the one to set against the mean difference
    (where the two methods' own spreads overlap, the paired difference
    can still be one sign at every seed). Per method: ``diff`` per seed,
    their mean and sd, and at how many seeds it is ahead or behind."""
    ref = results[reference]
    metric = ref["primary_metric"]
    out: dict[str, Any] = {"reference": reference, "metric": metric,
                           "methods": {}}
    for method, res in results.items():
        if method == reference:
            continue
        diffs = [a - b for a, b in zip(res["final_per_seed"][metric],
                                       ref["final_per_seed"][metric],
                                       strict=True)]
        out["methods"][method] = {
            "diff": diffs, "mean": fmean(diffs), "sd": stdev(diffs),
            "ahead": sum(d > 0 for d in diffs),
            "behind": sum(d < 0 for d in diffs)}
    return out


def _mean_known(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return fmean(known) if known else None


def _mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The seeds' curves point by point at the rounds every seed
    evaluated: mean metric and bytes, with the lowest and highest
    metric. Seeds may evaluate different rounds when a comparison is
    resumed with more rounds or another ``eval.freq`` (a round that was
    the last is evaluated); each seed's own curve stays in ``seeds``."""
    shared = set.intersection(*({p["round"] for p in c} for c in curves))
    out = []
    for points in zip(*([p for p in c if p["round"] in shared]
                        for c in curves), strict=True):
        values = [p["metric"] for p in points]
        point = {"round": points[0]["round"], "metric": fmean(values),
                 "metric_min": min(values), "metric_max": max(values),
                 "bytes_up_cumulative": fmean(
                     [p["bytes_up_cumulative"] for p in points])}
        personal = [p.get("metric_per_client") for p in points]
        if all(v is not None for v in personal):
            point["metric_per_client"] = fmean(
                [v for v in personal if v is not None])
        out.append(point)
    return out


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
    mean over clients), never mixed with the global number. Over several
    seeds: the mean ± sd of the final scores, and each seed's."""
    if len(comparison.get("seeds", [])) > 1:
        return _seeds_table(comparison)
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
            f"{_other_cells(res, metric, rounds, down=True)} |")
    return "\n".join(rows)


def _other_cells(res: dict[str, Any], metric: str, rounds: int,
                 down: bool) -> str:
    """Per-client final, mean gap, MB up (and down), KB up a round, wall
    seconds: the columns after the global score."""
    cells = [_personal_cell(res, metric),
             _gap_cell(res.get("aggregation_gap")),
             f"{res['bytes_up_total'] / 1e6:.3f}"]
    if down:
        cells.append(f"{res['bytes_down_total'] / 1e6:.3f}")
    cells += [f"{res['bytes_up_total'] / rounds / 1e3:.1f}",
              f"{res['wall_seconds']:.1f}"]
    return " | ".join(cells)


def _seeds_table(comparison: dict[str, Any]) -> str:
    seeds = comparison["seeds"]
    rows = [
        f"Task {comparison['task']}, model {comparison['model']}, "
        f"{comparison['clients']} clients, {comparison['rounds']} rounds, "
        f"seeds {', '.join(map(str, seeds))}: final scores as mean ± sd "
        f"over the {len(seeds)} seeds, then each seed's.",
        "",
        "| method | global final | per seed | per-client final (weighted "
        "/ mean) | mean aggregation gap | MB up / run | KB up / round | "
        "wall s (all seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, res in comparison["methods"].items():
        metric = res["primary_metric"]
        rounds = max(1, comparison["rounds"])
        values = res["final_per_seed"][metric]
        rows.append(
            f"| {method} | {metric} {res['final'][metric]:.4f} ± "
            f"{res['final_sd'][metric]:.4f} | "
            f"{', '.join(f'{v:.4f}' for v in values)} | "
            f"{_other_cells(res, metric, rounds, down=False)} |")
    paired = comparison.get("paired")
    if paired:
        rows += ["", f"Paired by seed (the runs of a seed share the split "
                 f"and the initial adapter): global final {paired['metric']}"
                 f" minus {paired['reference']}'s, mean ± sd of the "
                 "per-seed differences, and at how many seeds ahead / "
                 "behind.", ""]
        rows += [f"- {method}: {d['mean']:+.4f} ± {d['sd']:.4f} (ahead at "
                 f"{d['ahead']}, behind at {d['behind']} of "
                 f"{len(d['diff'])} seeds)"
                 for method, d in paired["methods"].items()]
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
            (PLOT_FILES[0], "round", "round", 1.0),
            (PLOT_FILES[1], "bytes_up_cumulative",
             "MB uploaded (all clients)", 1e-6)):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        metric = "metric"
        for method, res in comparison["methods"].items():
            metric = res["primary_metric"]
            xs = [p[x_key] * scale for p in res["curve"]]
            marker, line = styles.get(method, ("o", "-"))
            personal = [p.get("metric_per_client") for p in res["curve"]]
            both = bool(personal) and all(v is not None for v in personal)
            drawn = ax.plot(xs, [p["metric"] for p in res["curve"]],
                            marker=marker, linestyle=line,
                            label=f"{method} (global)" if both else method)
            if all("metric_min" in p for p in res["curve"]):
                # several seeds: the mean, and the band they span
                ax.fill_between(xs, [p["metric_min"] for p in res["curve"]],
                                [p["metric_max"] for p in res["curve"]],
                                color=drawn[0].get_color(), alpha=0.12)
            if both:
                ax.plot(xs, personal, marker=marker, linestyle=":",
                        alpha=0.6, label=f"{method} (per client)")
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {metric}")
        seeds = len(comparison.get("seeds", []))
        ax.set_title(f"{comparison['task']}, {comparison['clients']} "
                     "clients" + (f", mean of {seeds} seeds (band: lowest "
                                  "to highest)" if seeds > 1 else ""))
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
