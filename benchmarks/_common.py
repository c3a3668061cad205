"""Shared pieces of the GLUE benchmarks: one run, the results store, stats.

A run is identified by its protocol alone (task, method, clients, rank,
split, seed, learning rate, sizes), never by the benchmark that asked for
it: the same config and seed give the same numbers (DESIGN.md, invariant
7), so a run that two benchmarks need (e.g. rank 2 at 3 clients) is done
once. Every finished run is appended to a JSONL file at once, so a stopped
suite keeps what it finished and a restart skips it; a run under way
keeps its outdir in ``.inflight/`` beside the store, so a restart also
continues a stopped run from its last round's checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

# All six methods (the clients, local, rank, lr and comm benchmarks); the
# skew and pairs benchmarks keep the first three unless told otherwise.
METHODS = ("rolora", "lora", "ffa_lora", "fedex_lora", "flexlora",
           "fedsa_lora")
BASE_METHODS = ("rolora", "lora", "ffa_lora")
# Scored per client (each client's own model on its own test share):
# their cells hold that score, and the report says so.
PERSONAL = ("fedsa_lora",)
MODEL = "all-MiniLM-L6-v2"


def default_glue_root() -> Path:
    """$GLUE_DATA_ROOT, else the shared copy beside the checkout."""
    env = os.environ.get("GLUE_DATA_ROOT")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "glue"


# --- one run in a fresh process (the timing and memory benchmarks) -------

def quick_parser(doc: str) -> argparse.ArgumentParser:
    """``--quick`` (small, for tests) and ``--out`` (the results folder),
    which every benchmark script takes."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    return parser


def child_parser(doc: str, rounds: int, train_samples: int,
                 eval_samples: int) -> argparse.ArgumentParser:
    """The options of a benchmark that times runs, each in a child
    process of its own (``--child`` is the child's, hidden)."""
    parser = quick_parser(doc)
    parser.add_argument("--glue-root", default=str(default_glue_root()))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true",
                        help=argparse.SUPPRESS)
    parser.add_argument("--outdir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--train-samples", type=int, default=train_samples)
    parser.add_argument("--eval-samples", type=int, default=eval_samples)
    return parser


def child_args(args: argparse.Namespace, *extra: str) -> list[str]:
    """The argv that repeats ``args``'s sizes for a child, plus ``extra``
    (the child's outdir is added by :func:`run_child`)."""
    return ["--rounds", str(args.rounds), "--train-samples",
            str(args.train_samples), "--eval-samples",
            str(args.eval_samples), "--glue-root", str(args.glue_root),
            "--threads", str(args.threads), *extra]


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    """``--jobs N`` of the GLUE suites (``ensure``); check it with
    ``jobs_ok``."""
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, one process and one torch "
                        "thread each (at most one per core)")


def jobs_ok(jobs: int) -> bool:
    """False, saying why on stderr, unless ``jobs`` >= 1."""
    if jobs < 1:
        print(f"--jobs must be >= 1, got {jobs}", file=sys.stderr)
    return jobs >= 1


def run_child(script: str, argv: list[str]) -> dict[str, Any]:
    """Run ``script --child`` with ``argv`` and a scratch outdir in a fresh
    process; its last stdout line is the JSON it reports."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, script, "--child", "--outdir",
               str(Path(tmp) / "run"), *argv]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed (rc {done.returncode}): "
                           f"{' '.join(cmd)}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_in_child(args: argparse.Namespace, overrides: dict[str, Any]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """In the child: one embedded-runner run of ``overrides`` on
    ``args.threads`` torch threads; its summary and metrics lines."""
    import torch

    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.outputs import read_metrics
    from federatedscope_rolora.runners.simulation import run

    torch.set_num_threads(args.threads)
    cfg = load_config(None, {"outdir": args.outdir,
                             "data.root": args.glue_root, **overrides})
    summary = run(cfg)
    return summary, read_metrics(cfg.run_dir)


def per_round_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds of local training and of evaluation per round."""
    secs = [r["seconds"] for r in records]
    return {"train_s": sum(s["train"] for s in secs) / len(secs),
            "eval_s": sum(s["eval"] for s in secs) / len(secs)}


def write_results(out: str | Path, name: str, text: str,
                  data: dict[str, Any]) -> None:
    """``name.md`` (the report) and ``name.json`` (its numbers)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n",
                                      encoding="utf-8")


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's numbers."""

    task: str
    method: str
    clients: int
    seed: int
    lr: float
    rank: int = 2
    alpha: float = 0.0          # Dirichlet alpha; 0 means iid
    rounds: int = 10
    train_samples: int = 320
    eval_samples: int = 400
    eval_every: int = 5
    tok_len: int = 64
    batch_size: int = 16
    local_epochs: int = 1
    lora_alpha: int = 16
    head: str = "frozen"
    model: str = MODEL
    # local work: ``local_epochs`` steps of this unit ("batch" or "epoch")
    local_unit: str = "epoch"
    layers: tuple[int, ...] = ()    # layers_to_transform; (): all layers
    prefix_cache: bool = False      # rolora.prefix_cache

    @property
    def key(self) -> str:
        """A readable id; equal keys mean equal configs. Fields added
        later show only when they differ from their default, so the keys
        of runs already stored stay the same."""
        split = f"lda{self.alpha:g}" if self.alpha else "iid"
        key = (f"{self.task}|{self.method}|c{self.clients}|r{self.rank}|"
               f"{split}|s{self.seed}|lr{self.lr:g}|R{self.rounds}|"
               f"N{self.train_samples}|E{self.eval_samples}"
               f"/{self.eval_every}|T{self.tok_len}|B{self.batch_size}|"
               f"ep{self.local_epochs}|a{self.lora_alpha}|{self.head}|"
               f"{self.model}")
        if self.local_unit != "epoch":
            key += f"|{self.local_unit}"
        if self.layers:
            key += "|L" + ",".join(map(str, self.layers))
        if self.prefix_cache:
            key += "|pc"
        return key

    def with_(self, **changes: Any) -> RunSpec:
        return replace(self, **changes)


def overrides(spec: RunSpec, glue_root: Path, outdir: Path,
              use_gpu: bool = False) -> dict[str, Any]:
    """The config keys of ``spec`` (FederatedScope names); ``use_gpu``:
    on CUDA device 0 (where a run goes does not change its key)."""
    values: dict[str, Any] = {
        "use_gpu": use_gpu,
        "seed": spec.seed, "outdir": str(outdir),
        "data.root": str(glue_root), "data.type": f"{spec.task}@glue",
        "model.type": spec.model,
        "federate.method": spec.method,
        "federate.client_num": spec.clients,
        "federate.total_round_num": spec.rounds,
        "llm.tok_len": spec.tok_len,
        "llm.adapter.args": [{
            "adapter_package": "peft", "adapter_method": "lora",
            "r": spec.rank, "lora_alpha": spec.lora_alpha,
            "lora_dropout": 0.0, "target_modules": ["query", "value"]}],
        "train.batch_or_epoch": spec.local_unit,
        "train.local_update_steps": spec.local_epochs,
        "train.optimizer.type": "AdamW", "train.optimizer.lr": spec.lr,
        "dataloader.batch_size": spec.batch_size,
        "eval.freq": spec.eval_every,
        "rolora.head": spec.head,
        "rolora.train_samples": spec.train_samples,
        "rolora.eval_samples": spec.eval_samples,
        "rolora.threads": 1,
    }
    if spec.layers:
        values["llm.adapter.args"][0]["layers_to_transform"] = \
            list(spec.layers)
    if spec.prefix_cache:
        values["rolora.prefix_cache"] = True
    if spec.alpha:
        values["data.splitter"] = "lda"
        values["data.splitter_args"] = [{"alpha": spec.alpha}]
    return values


class RunBusy(RuntimeError):
    """Another process holds this run's in-flight folder."""


def inflight_dir(store_path: Path, spec: RunSpec) -> Path:
    """Where a run of the store at ``store_path`` keeps its outdir until
    it is stored: ``.inflight/`` beside the store (git-ignored), one
    folder per run key."""
    digest = hashlib.sha1(spec.key.encode("utf-8")).hexdigest()[:16]
    return store_path.parent / ".inflight" / f"{store_path.stem}-{digest}"


def run_one(spec: RunSpec, glue_root: Path, use_gpu: bool = False,
            keep: Path | None = None, store: Path | None = None,
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``spec`` and keep what the tables and plots need: curve, bytes
    per round, final metrics.

    Without ``keep`` the run's outdir is a scratch folder, removed
    afterwards. With it, the outdir lives in ``keep`` (an
    ``inflight_dir``) until the row is made: a run stopped there (the
    session ended, the machine went down) continues from its last
    checkpoint the next time, bit-identical to a run straight through
    (DESIGN.md, invariant 7), and its row says from which round
    (``resumed_after``). A checkpoint the run cannot continue from (a
    config key that matters changed, its metrics damaged, or stopped
    under another ``extra``: another device) is removed and the run
    starts over. RunBusy if another process holds ``keep``.

    With ``store`` (the path of a Store; ``keep`` its in-flight folder),
    the row, with ``extra`` in it, is appended there while ``keep`` is
    still locked, and a run another process has stored meanwhile is
    RunBusy, not run again: two suites sharing a store never run a run
    twice, even when one finishes it after the other made its list."""
    if keep is None:
        scratch = Path(tempfile.mkdtemp(prefix="glue_bench_"))
        try:
            return _run_in(spec, glue_root, use_gpu, scratch / "run")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    import fcntl

    keep.mkdir(parents=True, exist_ok=True)
    with open(keep / "lock", "w", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"{spec.key} is running in another process "
                          f"({keep})") from None
        stored = Store(store) if store is not None else None
        if stored is not None and spec in stored:
            shutil.rmtree(keep, ignore_errors=True)
            raise RunBusy(f"{spec.key} was finished by another process "
                          f"(stored in {store})")
        _continue_where_started(spec, keep, extra)
        row = {**_run_in(spec, glue_root, use_gpu, keep / "run"),
               **(extra or {})}
        if stored is not None:
            stored.add(row)  # appends; no other process holds this run
        shutil.rmtree(keep, ignore_errors=True)
    return row


def _continue_where_started(spec: RunSpec, keep: Path,
                            extra: dict[str, Any] | None) -> None:
    """Keep the ``extra`` (the device) of the process that starts a run
    in ``keep``; a run stopped under other ``extra`` starts over, since
    a run partly on one device and partly on another repeats on neither
    and its row could name only one. (A folder without the record, from
    before it was kept, continues.)"""
    started, now = keep / "extra.json", json.dumps(extra or {},
                                                   sort_keys=True)
    if started.exists() and started.read_text(encoding="utf-8") != now:
        print(f"{spec.key}: starting over (stopped under "
              f"{started.read_text(encoding='utf-8')}, now {now})",
              file=sys.stderr)
        shutil.rmtree(keep / "run", ignore_errors=True)
    started.write_text(now, encoding="utf-8")


def _run_in(spec: RunSpec, glue_root: Path, use_gpu: bool, run_dir: Path
            ) -> dict[str, Any]:
    """Run ``spec`` in ``run_dir``, continuing the run there if it has a
    checkpoint."""
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.checkpoint import (
        CheckpointError,
        load_checkpoint,
    )
    from federatedscope_rolora.runners.outputs import (
        OutdirError,
        read_metrics,
    )
    from federatedscope_rolora.runners.simulation import run

    cfg = load_config(None, overrides(spec, glue_root, run_dir, use_gpu))
    before, resumed_after = 0.0, 0
    try:
        ckpt = load_checkpoint(run_dir)
    except CheckpointError as err:
        ckpt = None
        print(f"{spec.key}: starting over ({err})", file=sys.stderr)
    if ckpt is not None:
        before, resumed_after = ckpt.wall_seconds, ckpt.round_idx
    elif run_dir.exists():  # stopped before its first checkpoint
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    try:
        summary = run(cfg, resume=ckpt is not None)
    except (CheckpointError, OutdirError) as err:
        print(f"{spec.key}: starting over ({err})", file=sys.stderr)
        shutil.rmtree(run_dir)
        before, resumed_after = 0.0, 0
        start = time.perf_counter()
        summary = run(cfg)
    wall = before + time.perf_counter() - start
    row = result_row(spec, summary, read_metrics(cfg.run_dir), wall)
    if resumed_after:
        row["resumed_after"] = resumed_after
    return row


def result_row(spec: RunSpec, summary: dict[str, Any],
               records: list[dict[str, Any]], wall: float
               ) -> dict[str, Any]:
    """One JSONL line: the spec, the eval curve, bytes per round."""
    sizes = [int(n) for n in summary["client_examples"].values()]
    return {
        "key": spec.key, "spec": asdict(spec),
        "primary_metric": summary["primary_metric"],
        "final": summary["final"], "best": summary["best"],
        "final_per_client": summary.get("final_per_client"),
        "curve": [{"round": r["round"], **r["eval"]}
                  for r in records if "eval" in r],
        "gap_rounds": [{"round": r["round"],
                        "aggregation_gap": r.get("aggregation_gap"),
                        "client_drift": r.get("client_drift")}
                       for r in records],
        "bytes_rounds": [{"round": r["round"], "up": r["bytes"]["up"],
                          "down": r["bytes"]["down"]} for r in records],
        "bytes_up_total": summary["bytes_up_total"],
        "bytes_down_total": summary["bytes_down_total"],
        "parameters": summary["parameters"],
        "train_examples": summary["train_examples"],
        "test_examples": summary["test_examples"],
        "client_examples_min": min(sizes), "client_examples_max": max(sizes),
        "data_sources": summary["data_sources"],
        "train_seconds": sum(r["seconds"]["train"] for r in records),
        "eval_seconds": sum(r["seconds"]["eval"] for r in records),
        "wall_seconds": wall,
    }


class Store:
    """Finished runs, one JSON object a line; appended run by run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if not path.exists():
            return
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        seen: dict[str, int] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row["key"]
            except (ValueError, KeyError, TypeError) as err:
                if number == len(lines):
                    # the last line, cut short by a crash mid-append: its
                    # run is not stored and runs again
                    print(f"{path}: line {number} is cut short ({err}); "
                          "its run is taken as not stored",
                          file=sys.stderr)
                    continue
                raise ValueError(f"{path}: line {number} is not a stored "
                                 f"run ({err}); repair or delete that "
                                 "line (its run then runs again)") from err
            if key in seen:
                print(f"{path}: run {key} is stored twice (lines "
                      f"{seen[key]} and {number}); the later is used",
                      file=sys.stderr)
            seen[key] = number
            self.rows[key] = row

    def __contains__(self, spec: object) -> bool:
        return isinstance(spec, RunSpec) and spec.key in self.rows

    def get(self, spec: RunSpec) -> dict[str, Any] | None:
        return self.rows.get(spec.key)

    def add(self, row: dict[str, Any]) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write(2) on an O_APPEND descriptor: two suites appending to
        # one store (e.g. ``--only local`` beside ``--only pairs``) cannot
        # interleave their lines.
        data = (json.dumps(row) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)   # against another suite's cut
            _cut_partial_line(fd)
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.path}: short write of a run line")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.rows[row["key"]] = row


def _cut_partial_line(fd: int) -> None:
    """Drop the end of the file open at ``fd`` after its last newline:
    half a row, which a crash mid-append left and the store took as not
    stored (its run is run again)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = size
    while keep > 0:
        start = max(0, keep - 65536)
        block = os.pread(fd, keep - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        keep = start
    os.ftruncate(fd, keep)


def under_way(store: Store, specs: list[RunSpec]) -> dict[str, str]:
    """The runs not stored whose outdir is in ``.inflight/`` (running, or
    stopped and to be continued), each as rounds written / planned."""
    going: dict[str, str] = {}
    for spec in specs:
        metrics = inflight_dir(store.path, spec) / "run" / "metrics.jsonl"
        if spec not in store and metrics.exists():
            lines = metrics.read_text(encoding="utf-8").splitlines()
            written = sum(1 for line in lines if line.endswith("}"))
            going[spec.key] = f"{written}/{spec.rounds}"
    return going


def ensure(specs: Iterable[RunSpec], store: Store, glue_root: Path,
           status: Path | None = None,
           extra: dict[str, Any] | None = None, jobs: int = 1,
           use_gpu: bool = False) -> None:
    """Run every spec the store lacks, in order, logging progress;
    ``extra`` goes into each new row (e.g. the device it ran on).

    With ``jobs`` > 1, that many runs at once, each in a process of its
    own (one torch thread each, so at most one job per core), stored as
    each finishes; a run gives the same numbers in either mode. If one
    fails, nothing more starts, the runs under way finish and are
    stored, and the first error is raised. A run another process holds
    or has stored since the list was made (another suite on the same
    store) is skipped, saying so; the rows other processes stored are
    read in at the end."""
    todo = [s for s in dict.fromkeys(specs) if s not in store]
    keeps = {s: inflight_dir(store.path, s) for s in todo}

    def finish(i: int, row: dict[str, Any]) -> None:
        store.rows[row["key"]] = row  # run_one appended it to the file
        metric = row["primary_metric"]
        line = (f"[{i}/{len(todo)}] {row['key']}: {metric} "
                f"{row['final'][metric]:.4f} in "
                f"{row['wall_seconds']:.0f} s")
        print(line, file=sys.stderr, flush=True)
        if status is not None:
            with open(status, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def busy(err: RunBusy) -> None:
        print(f"skipped: {err}", file=sys.stderr, flush=True)

    if jobs <= 1 or len(todo) <= 1:
        for i, spec in enumerate(todo, 1):
            try:
                finish(i, run_one(spec, glue_root, use_gpu, keeps[spec],
                                  store.path, extra))
            except RunBusy as err:
                busy(err)
        store.rows.update(Store(store.path).rows)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker, never a fork of a process
    # whose torch already runs threads.
    context = multiprocessing.get_context("spawn")
    failure: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(run_one, spec, glue_root, use_gpu,
                               keeps[spec], store.path, extra)
                   for spec in todo]
        done = 0
        for future in as_completed(futures):
            try:
                row = future.result()
            except RunBusy as err:
                busy(err)
                continue
            except BaseException as err:  # noqa: BLE001 - re-raised below
                if failure is None:
                    failure = err
                    pool.shutdown(wait=False, cancel_futures=True)
                continue
            done += 1
            finish(done, row)
    store.rows.update(Store(store.path).rows)
    if failure is not None:
        raise failure


def majority_share(spec: RunSpec, glue_root: Path) -> float:
    """Share of the majority label among the test rows a run of ``spec``
    is scored on: what predicting one class scores. Where the test set
    is subsampled, the rows are drawn with the run's seed, so this
    differs by seed."""
    from collections import Counter

    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.setup import scored_subset
    from federatedscope_rolora.training.glue import load_task

    cfg = load_config(None, overrides(spec, glue_root, Path("unused")))
    _, test = load_task(spec.task, glue_root, seed=spec.seed,
                        holdout=cfg["rolora.holdout"])
    labels = scored_subset(cfg, test).labels
    return max(Counter(labels).values()) / len(labels)


def final_metric(row: dict[str, Any]) -> float:
    """The global adapter's final score."""
    return float(row["final"][row["primary_metric"]])


def score(row: dict[str, Any]) -> float:
    """The number a table shows: the per-client final score
    (example-weighted) for a personalised method, else the global one."""
    if row["spec"]["method"] not in PERSONAL:
        return final_metric(row)
    personal = row.get("final_per_client")
    if not personal:
        # the table's column says "per client": the global score there
        # would be another number under that name
        raise ValueError(f"run {row['key']!r}: a {row['spec']['method']} "
                         "run without its per-client final score "
                         "(final_per_client)")
    return float(personal["example_weighted"][row["primary_metric"]])


def paired_points(scores: Mapping[Any, float],
                  base: Mapping[Any, float]) -> list[float]:
    """``scores`` minus ``base`` in points, seed by seed, over the seeds
    both hold (in seed order): the runs of a seed share its split, test
    rows and initial adapter, so these differences, not the two methods'
    own spreads, are what a difference is to be weighed against."""
    seeds = sorted(set(scores) & set(base), key=int)
    return [(scores[s] - base[s]) * 100 for s in seeds]


def label(method: str) -> str:
    """The method's name in a table, marked when its cell is a
    per-client score."""
    return f"{method} (per client)" if method in PERSONAL else method


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    if not values:
        return math.nan, math.nan
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def cell(values: list[float], scale: float = 100.0) -> str:
    """'mean ± sd (n)' in percent ('value (1)' for one seed: no spread
    to show), or 'n/a'."""
    if not values:
        return "n/a"
    mean, sd = mean_sd([v * scale for v in values])
    if len(values) == 1:
        return f"{mean:.2f} (1)"
    return f"{mean:.2f} ± {sd:.2f} ({len(values)})"
