"""The run's results in FederatedScope's outdir, in the embedded runner's
layout: ``metrics.jsonl`` (a line per round: phase, participants, left-out
clients, loss, aggregation gap and client drift, evaluation, exact bytes
up and down by role, seconds),
``summary.json`` and, written by the server, ``adapter/`` (PEFT).

FederatedScope's own files (``eval_results.log``, ``exp_print.log``,
``system_metrics.log``) stay beside them; its byte counters there are
``pympler`` estimates of Python objects, these are tensor bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from federatedscope_rolora import __version__
from federatedscope_rolora.core.accounting import TrafficLedger
from federatedscope_rolora.core.methods import RoundPlan
from federatedscope_rolora.runners.outputs import (
    SUMMARY_FILE,
    RunWriter,
    round_results,
    write_json_atomic,
)

logger = logging.getLogger("federatedscope.rolora")


def eval_record(results: dict[str, float], metric_names: tuple[str, ...],
                split: str = "test") -> dict[str, float]:
    """FederatedScope's ``test_acc``, ``test_avg_loss``... as the embedded
    runner's ``{"acc": ..., "loss": ...}``."""
    record = {name: float(results[f"{split}_{name}"])
              for name in metric_names if f"{split}_{name}" in results}
    if f"{split}_avg_loss" in results:
        record["loss"] = float(results[f"{split}_avg_loss"])
    return record


class RunRecorder:
    """Collects a round from its broadcast to the next one (or the end)
    and appends it to ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, ledger: TrafficLedger,
                 metric_names: tuple[str, ...]) -> None:
        self.run_dir = run_dir
        self.ledger = ledger
        self.metric_names = metric_names
        self.records: list[dict[str, Any]] = []
        self.client_examples: dict[int, int] = {}
        self._open: dict[str, Any] | None = None
        self._round_start = 0.0
        self._run_start = time.perf_counter()

    def open_round(self, plan: RoundPlan, participants: list[int]) -> None:
        self._open = {"round": plan.round_idx, "phase": plan.phase,
                      "trained": sorted(plan.trained_roles),
                      "participants": participants, "clients": [],
                      "rejected": {}, "train_loss": None}
        self._round_start = time.perf_counter()

    def trained(self, losses: dict[int, tuple[float, int]],
                rejected: dict[int, str], train_seconds: float,
                gap: dict[str, float | None] | None = None) -> None:
        """The accepted clients' (loss, examples), who was left out, and
        the aggregation gap and client drift of the merge."""
        if self._open is None:
            raise RuntimeError("no round is open")
        total = sum(n for _, n in losses.values())
        self._open.update({
            "clients": sorted(losses), "rejected": rejected,
            "train_loss": (sum(loss * n for loss, n in losses.values())
                           / total) if total else None,
            "train_seconds": train_seconds, **(gap or {}),
        })
        self.client_examples.update({c: n for c, (_, n) in losses.items()})

    def close_round(self, eval_results: dict[str, float]
                    ) -> dict[str, Any] | None:
        """Finish the open round (with its evaluation, if one ran) and
        append it to ``metrics.jsonl``; None if no round was open."""
        record, self._open = self._open, None
        if record is None:
            return None
        evaluated = eval_record(eval_results, self.metric_names)
        if evaluated:
            record["eval"] = evaluated
        record["bytes"] = self.ledger.totals(round_idx=record["round"])
        record["seconds"] = {"round": time.perf_counter() -
                             self._round_start,
                             "train": record.pop("train_seconds", 0.0)}
        self.records.append(record)
        RunWriter(self.run_dir).append_round(record)
        self._log(record)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        up, down = record["bytes"]["up"], record["bytes"]["down"]
        text = ", ".join(f"{k} {v:.4f}" for k, v in
                         record.get("eval", {}).items())
        logger.info("rolora round %d (phase %s, trains %s): clients %s, "
                    "left out %s; bytes up %s (%d), down %s (%d)%s",
                    record["round"], record["phase"],
                    "+".join(record["trained"]), record["clients"],
                    sorted(record["rejected"]), up, sum(up.values()), down,
                    sum(down.values()), f"; test {text}" if text else "")

    def write_summary(self, about: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``: final and best evaluation, bytes, time, plus
        ``about`` (method, task, model...)."""
        summary: dict[str, Any] = {
            "version": __version__, "runner": "federatedscope", **about,
            **round_results(self.records, self.metric_names[0]),
            "wall_seconds": time.perf_counter() - self._run_start,
            "client_examples": {str(c): n for c, n in
                                sorted(self.client_examples.items())},
        }
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary

