"""What a run writes to its outdir (DESIGN.md §6)."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from federatedscope_rolora.config import Config, dump_config

CONFIG_FILE = "config.yaml"
# A FederatedScope plugin run's config in the embedded runner's schema,
# beside FederatedScope's own config.yaml (its full dump, which the
# embedded loader refuses): what eval and export read by default.
PLUGIN_CONFIG_FILE = "rolora_config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"


class OutdirError(ValueError):
    """The outdir cannot take this run."""


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before ``replace_durably`` moves it."""
    return path.with_name(path.name + ".tmp")


def replace_durably(tmp: Path, path: Path) -> None:
    """Move a fully written ``tmp`` over ``path``: its bytes reach the
    disk first, then the rename, then the directory entry, so after a
    crash ``path`` holds the old version or the new one, never a torn or
    empty file."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_files_durably(folder: Path, write: Callable[[Path], None]
                        ) -> None:
    """Let ``write`` fill an empty scratch folder beside ``folder``, then
    move each file it wrote into ``folder`` with ``replace_durably``.

    After a crash every file in ``folder`` is its old version or its new
    one, never torn; files of ``folder`` that ``write`` did not write
    (another writer's) stay. If ``write`` raises, ``folder`` is
    untouched and the scratch folder is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.",
                                    dir=folder.parent))
    try:
        write(scratch)
        _move_tree(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _move_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            _move_tree(entry, target / entry.name)
        else:
            replace_durably(entry, target / entry.name)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, then rename it
    over ``path``: a reader never sees half a file, and a crash or an
    error in ``write`` never destroys the previous version."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False)
                      + "\n")


def write_config_atomic(cfg: Config, path: Path) -> None:
    write_atomic(path, lambda tmp: dump_config(cfg, tmp))


def run_config_file(run_dir: Path) -> Path:
    """The config a finished run ran with: a plugin run's
    ``rolora_config.yaml``, else its ``config.yaml``."""
    plugin = run_dir / PLUGIN_CONFIG_FILE
    return plugin if plugin.is_file() else run_dir / CONFIG_FILE


def run_files(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` holds, and a new run would
    overwrite: a run's own, or a user's of the same name (a commented
    ``config.yaml`` in an outdir of ``.``)."""
    names = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, f"{CHECKPOINT_DIR}/",
             f"{ADAPTER_DIR}/")
    return [n for n in names if os.path.lexists(run_dir / n.rstrip("/"))]


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run that a new one would
    overwrite."""
    return bool(run_files(run_dir))


def refuse_existing_run(run_dir: Path) -> None:
    """OutdirError naming what ``run_dir`` holds, if it holds a run."""
    if holds_run(run_dir):
        raise OutdirError(f"outdir {str(run_dir)!r} already holds a run "
                          f"({', '.join(run_files(run_dir))}); "
                          "choose another outdir, or continue that run "
                          "with --resume")


def check_outdir(run_dir: Path) -> None:
    """OutdirError if no run could be written in ``run_dir``: it, or the
    nearest folder above it that exists, is a file, or that folder is
    not writable (e.g. a read-only mount). Checked before a run builds
    anything, so it is refused at once."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == run_dir else \
            f"cannot be created: {str(existing)!r} is a file"
        raise OutdirError(f"outdir {str(run_dir)!r} {what}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutdirError(f"outdir {str(run_dir)!r} cannot be written: "
                          f"{str(existing)!r} is not writable")


def truncate_lines(path: Path, lines: int) -> None:
    """Cut ``path`` back to its first ``lines`` complete lines.

    A run killed mid-round may have written the line of a round that its
    checkpoint does not hold, or half of one; both go, so the resumed
    run writes that round again. Fewer complete lines than ``lines``
    means the file was edited or lost: an OutdirError naming it.
    """
    data = path.read_bytes() if path.exists() else b""
    end = 0
    for _ in range(lines):
        newline = data.find(b"\n", end)
        if newline < 0:
            raise OutdirError(f"{path.name} in {str(path.parent)!r} holds "
                              f"fewer than the {lines} complete lines its "
                              "checkpoint counts; it was edited or "
                              "truncated, so the run cannot be resumed")
        end = newline + 1
    if end < len(data):
        os.truncate(path, end)


class RunDirLock:
    """One process at a time writes a run folder: an exclusive ``flock``
    on the folder, taken before anything there is read for a resume or
    written, and held until the run ends (the kernel drops it when the
    process dies, so a killed run leaves no stale lock). Two processes
    on one outdir (a command started twice, a resume beside the run it
    continues) appended the same rounds twice and overwrote each
    other's checkpoint. A filesystem that cannot lock a folder (some
    network mounts) leaves it unguarded rather than refusing the run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock if the folder exists and it is not held yet;
        OutdirError if another process holds it."""
        if self._fd is not None or not self.run_dir.is_dir():
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutdirError(
                    f"outdir {str(self.run_dir)!r} is in use: another "
                    "process is writing a run there (the same command "
                    "started twice, or a run still going that this one "
                    "would continue); wait for it to end, or choose "
                    "another outdir") from None
            return    # no locks on this filesystem
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _remove_scratch(run_dir: Path) -> None:
    """Remove the scratch folders ``write_files_durably`` left beside
    the adapter when a run was killed while writing it (a full copy of
    the adapter each). Called under the run's lock, so no other process
    is writing one."""
    for path in run_dir.glob(f".{ADAPTER_DIR}.*"):
        if path.is_dir() and re.fullmatch(rf"\.{ADAPTER_DIR}\.\w{{8}}",
                                          path.name):
            shutil.rmtree(path, ignore_errors=True)


class RunWriter:
    """Appends one metrics line per round; writes config and summary;
    holds the run folder's lock until ``close``."""

    def __init__(self, run_dir: Path, lock: RunDirLock | None = None
                 ) -> None:
        self.run_dir = run_dir
        self.lock = lock or RunDirLock(run_dir)

    @classmethod
    def create(cls, cfg: Config, lock: RunDirLock | None = None
               ) -> RunWriter:
        """Start the run in ``cfg.run_dir`` (its config.yaml), under
        ``lock`` (taken here once the folder exists)."""
        run_dir = cfg.run_dir
        lock = lock or RunDirLock(run_dir)
        refuse_existing_run(run_dir)
        check_outdir(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            refuse_existing_run(run_dir)  # written while this one was built
            write_config_atomic(cfg, run_dir / CONFIG_FILE)
        except OSError as err:
            raise OutdirError(f"outdir {str(run_dir)!r} cannot be "
                              f"written: {err}") from err
        return cls(run_dir, lock)

    @classmethod
    def reopen(cls, cfg: Config, metrics_lines: int, lock: RunDirLock
               ) -> RunWriter:
        """Continue the run in ``cfg.run_dir`` (under ``lock``, held):
        keep the metrics lines its checkpoint counts, and record the
        config it continues under (e.g. with more rounds)."""
        run_dir = cfg.run_dir
        try:
            truncate_lines(run_dir / METRICS_FILE, metrics_lines)
            write_config_atomic(cfg, run_dir / CONFIG_FILE)
        except OSError as err:
            raise OutdirError(f"outdir {str(run_dir)!r} cannot be "
                              f"written: {err}") from err
        _remove_scratch(run_dir)
        return cls(run_dir, lock)

    def close(self) -> None:
        self.lock.release()

    def append_round(self, record: Mapping[str, Any]) -> None:
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / ADAPTER_DIR

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR


def bytes_totals(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Bytes by direction and role over the rounds of ``records``: the
    same sums as the ledger's, and whole across a resume."""
    out: dict[str, dict[str, int]] = {"up": {}, "down": {},
                                      "up_rejected": {}, "eval_down": {}}
    for record in records:
        for direction, by_role in record["bytes"].items():
            into = out.setdefault(direction, {})
            for role, num in by_role.items():
                into[role] = into.get(role, 0) + num
    return out


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) \
        else -math.inf


def round_results(records: list[dict[str, Any]], primary: str
                  ) -> dict[str, Any]:
    """What both runners' ``summary.json`` reports from the metrics lines:
    final and best evaluation (by ``primary``; absent if none ran) and
    bytes by direction and role, with their totals."""
    totals = bytes_totals(records)
    out: dict[str, Any] = {
        "rounds": len(records), "primary_metric": primary,
        "bytes": totals,
        "bytes_up_total": sum(totals["up"].values()),
        "bytes_down_total": sum(totals["down"].values()),
        "bytes_up_rejected_total": sum(totals["up_rejected"].values()),
        "bytes_eval_down_total": sum(totals["eval_down"].values()),
    }
    evals = [(r["round"], r["eval"]) for r in records if "eval" in r]
    if evals:
        best_round, best = max(evals,
                               key=lambda e: _finite(e[1].get(primary)))
        out["final"] = evals[-1][1]
        out["best"] = {**best, "round": best_round}
    # Each client's own model on its own test share: reported apart,
    # never mixed with the global model's score.
    personal = [(r["round"], r["eval_per_client"]) for r in records
                if "eval_per_client" in r]
    if personal:
        best_round, best = max(personal, key=lambda e: _finite(
            e[1]["example_weighted"].get(primary)))
        out["final_per_client"] = personal[-1][1]
        out["best_per_client"] = {**best, "round": best_round}
    gaps = [r["aggregation_gap"] for r in records
            if r.get("aggregation_gap") is not None]
    if gaps:
        out["aggregation_gap_mean"] = sum(gaps) / len(gaps)
    return out


def read_metrics_head(run_dir: Path, lines: int
                      ) -> list[dict[str, Any]]:
    """The first ``lines`` records of a run (complete lines only); reads,
    never writes, so a resume can check them before it changes
    anything."""
    path = run_dir / METRICS_FILE
    data = path.read_bytes() if path.exists() else b""
    complete = data.split(b"\n")[:-1]
    if len(complete) < lines:
        raise OutdirError(f"{METRICS_FILE} in {str(run_dir)!r} holds "
                          f"{len(complete)} complete lines, fewer than the "
                          f"{lines} its checkpoint counts; it was edited or "
                          "truncated, so the run cannot be resumed")
    records = []
    for number, line in enumerate(complete[:lines], start=1):
        try:
            record = json.loads(line)
        except ValueError as err:
            raise OutdirError(f"{path}:{number}: not a metrics record "
                              f"({err})") from None
        if not _is_record(record, number):
            # else the resumed run would fail in its summary, after
            # training and checkpointing rounds on top of it
            raise OutdirError(f"{path}:{number}: not the metrics record "
                              f"of round {number} (its round, bytes, "
                              "eval, eval_per_client or aggregation_gap "
                              "is missing or malformed)")
        records.append(record)
    return records


def _is_record(record: Any, round_idx: int) -> bool:
    """Whether ``record`` holds what ``round_results`` reads from the
    line of round ``round_idx``."""
    if not isinstance(record, dict) or record.get("round") != round_idx:
        return False
    by_direction = record.get("bytes")
    if not isinstance(by_direction, dict) or not all(
            isinstance(by_role, dict) and all(
                isinstance(n, int) for n in by_role.values())
            for by_role in by_direction.values()):
        return False
    if not _is_scores(record.get("eval", {})):
        return False
    personal = record.get("eval_per_client")
    if personal is not None and not (
            isinstance(personal, dict)
            and _is_scores(personal.get("example_weighted"))):
        return False
    gap = record.get("aggregation_gap")
    return gap is None or _is_number(gap)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scores(scores: Any) -> bool:
    """A metric name -> number (or null, a failed evaluation) mapping."""
    return isinstance(scores, dict) and all(
        v is None or _is_number(v) for v in scores.values())


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``summary.json``; None if it is missing or damaged (not
    a JSON object)."""
    try:
        data = json.loads((run_dir / SUMMARY_FILE).read_text(
            encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round records of a run, in order."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
