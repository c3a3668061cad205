"""The run's results in FederatedScope's outdir, in the embedded runner's
layout: ``metrics.jsonl`` (a line per round: phase, participants, left-out
clients, loss, aggregation gap and client drift, evaluation, exact bytes
up and down by role, seconds),
``summary.json`` and, written by the server, ``adapter/`` (PEFT).

With per-client evaluation, a round's line waits for every client's
score of its model (``expect_scores`` / ``scored``): the clients' replies
may come after the next round has begun (standalone mode queues them
behind its broadcast, distributed mode in any order), and the lines are
still written in round order.

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
from federatedscope_rolora.training.metrics import mean_over_clients

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
        # closed rounds not yet written, in round order
        self._held: list[dict[str, Any]] = []
        # round -> clients whose score it waits for, and those in
        self._expected: dict[int, set[int]] = {}
        self._scores: dict[int, dict[int, tuple[dict[str, float], int]]] \
            = {}
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

    def unexpected(self, client_id: int, reason: str) -> None:
        """An upload of the open round that answered nothing (from a
        client not drawn, a second one, one stamped for a past round),
        refused: listed in the round's line under ``unexpected``."""
        if self._open is not None:
            self._open.setdefault("unexpected", []).append(
                {"client": client_id, "reason": reason})

    def close_round(self, eval_results: dict[str, float]
                    ) -> dict[str, Any] | None:
        """Finish the open round (with its evaluation, if one ran) and
        append it to ``metrics.jsonl`` once its clients' scores are in;
        None if no round was open."""
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
        self._held.append(record)
        self._write_ready()
        return record

    def expect_scores(self, round_idx: int, clients: list[int]) -> None:
        """Round ``round_idx``'s line waits for the score of each of
        ``clients``' own model."""
        self._expected[round_idx] = set(clients)
        self._scores[round_idx] = {}

    def scored(self, round_idx: int, client_id: int,
               results: dict[str, float], examples: int) -> bool:
        """Client ``client_id``'s ``test_*`` results on its ``examples``
        test rows (none: 0) for round ``round_idx``; True once every
        client expected has answered. A reply nobody waits for is
        logged and dropped."""
        waiting = self._expected.get(round_idx, set())
        if client_id not in waiting or \
                client_id in self._scores[round_idx]:
            logger.warning("rolora: dropped an unexpected evaluation of "
                           "client %s for round %s", client_id, round_idx)
            return False
        self._scores[round_idx][client_id] = (
            eval_record(results, self.metric_names), examples)
        done = not self._waits(round_idx)
        self._write_ready()
        return done

    def pending(self) -> list[int]:
        """Rounds still waiting for clients' scores."""
        return sorted(r for r in self._expected if self._waits(r))

    def _waits(self, round_idx: int) -> bool:
        return round_idx in self._expected and \
            len(self._scores[round_idx]) < len(self._expected[round_idx])

    def _write_ready(self, force: bool = False) -> None:
        """Write the held lines, in order, up to the first that still
        waits for scores (all of them with ``force``)."""
        while self._held and (force or
                              not self._waits(self._held[0]["round"])):
            record = self._held.pop(0)
            round_idx = record["round"]
            if round_idx in self._expected:
                self._expected.pop(round_idx)
                scores = self._scores.pop(round_idx)
                record["eval_per_client"] = mean_over_clients(
                    {c: s for c, s in scores.items() if s[1] > 0})
            self.records.append(record)
            RunWriter(self.run_dir).append_round(record)
            self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        up, down = record["bytes"]["up"], record["bytes"]["down"]
        text = ", ".join(f"{k} {v:.4f}" for k, v in
                         record.get("eval", {}).items())
        personal = record.get("eval_per_client", {})
        if personal:
            text += "; clients' own models (example-weighted) " + \
                ", ".join(f"{k} {v:.4f}" for k, v in
                          personal["example_weighted"].items())
        logger.info("rolora round %d (phase %s, trains %s): clients %s, "
                    "left out %s; bytes up %s (%d), down %s (%d)%s",
                    record["round"], record["phase"],
                    "+".join(record["trained"]), record["clients"],
                    sorted(record["rejected"]), up, sum(up.values()), down,
                    sum(down.values()), f"; test {text}" if text else "")

    def write_summary(self, about: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``: final and best evaluation, bytes, time, plus
        ``about`` (method, task, model...). A line still waiting for
        clients' scores is written first, with those that came."""
        if self._held:
            logger.warning("rolora: rounds %s end without every client's "
                           "score", self.pending())
            self._write_ready(force=True)
        summary: dict[str, Any] = {
            "version": __version__, "runner": "federatedscope", **about,
            **round_results(self.records, self.metric_names[0]),
            "wall_seconds": time.perf_counter() - self._run_start,
            "client_examples": {str(c): n for c, n in
                                sorted(self.client_examples.items())},
        }
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary

