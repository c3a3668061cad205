"""The embedded runner: a whole federation in one process.

One frozen base model serves every client (DESIGN.md, invariant 6): a
client's state is only its adapter tensors, loaded into the shared model
for its local update. The protocol itself (what is sent down, what comes
up, validation, averaging, byte accounting) is the core's AdapterServer,
the same code the FederatedScope plugin uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from federatedscope_rolora import __version__
from federatedscope_rolora.config import Config
from federatedscope_rolora.core.methods import RoundPlan
from federatedscope_rolora.core.sampling import derive_seed, sample_clients
from federatedscope_rolora.core.server import (
    AdapterServer,
    ClientUpdate,
    build_update,
)
from federatedscope_rolora.core.validation import InvalidUpdate
from federatedscope_rolora.runners.outputs import RunWriter
from federatedscope_rolora.runners.setup import Federation, build_federation
from federatedscope_rolora.training.local import evaluate, local_train
from federatedscope_rolora.training.models import (
    count_parameters,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
    set_trainable,
)

log = logging.getLogger("federatedscope_rolora")

State = dict[str, torch.Tensor]
RoundCallback = Callable[[dict[str, Any]], None]
# Test hook: may replace a client's update (or raise) before it is sent.
UpdateHook = Callable[[ClientUpdate], ClientUpdate]


class SetupError(ValueError):
    """The run could not start: bad data, model or split. Nothing was
    written."""


class Simulation:
    """Server, clients' adapter states and the shared model of one run."""

    def __init__(self, fed: Federation,
                 update_hook: UpdateHook | None = None) -> None:
        self.fed = fed
        self.cfg = fed.cfg
        self.server = AdapterServer(fed.method,
                                    get_adapter_state(fed.model),
                                    fed.cfg["rolora.weighting"])
        self.clients: dict[int, State] = {}
        self.update_hook = update_hook

    def participants(self, round_idx: int) -> list[int]:
        return sample_clients(self.cfg["federate.client_num"], round_idx,
                              self.cfg["seed"],
                              self.cfg["federate.sample_client_rate"],
                              self.cfg["federate.sample_client_num"])

    def client_round(self, client_id: int, plan: RoundPlan
                     ) -> ClientUpdate:
        """Sync, train and package one client's update."""
        fed = self.fed
        state = self.clients.setdefault(client_id, {})
        state.update(self.server.downlink(client_id, plan.round_idx))
        load_adapter_state(fed.model, state)
        set_trainable(fed.model, plan.trained_keys(state))
        rows = fed.client_indices[client_id]
        result = local_train(
            fed.model, fed.train, rows, fed.local,
            seed=derive_seed("local", self.cfg["seed"], plan.round_idx,
                             client_id),
            pad_token_id=fed.pad_token_id, device=fed.device)
        trained = get_adapter_state(fed.model)
        self.clients[client_id] = trained
        update = build_update(client_id, plan, trained, len(rows),
                              result.loss)
        return self.update_hook(update) if self.update_hook else update

    def run_round(self, round_idx: int) -> dict[str, Any]:
        """One round: every participant trains, the server merges, and the
        global adapter is evaluated every ``eval.freq`` rounds."""
        start = time.perf_counter()
        plan = self.server.plan(round_idx)
        train_s = 0.0
        losses: dict[int, float] = {}
        rejected: dict[int, str] = {}
        for client_id in self.participants(round_idx):
            t0 = time.perf_counter()
            update = self.client_round(client_id, plan)
            train_s += time.perf_counter() - t0
            try:
                self.server.receive(update)
            except InvalidUpdate as err:
                rejected[client_id] = str(err)
                log.warning("round %d: left out %s", round_idx, err)
                continue
            losses[client_id] = update.train_loss
        self.server.aggregate(round_idx)
        record: dict[str, Any] = {
            "round": round_idx, "phase": plan.phase,
            "trained": sorted(plan.trained_roles),
            "clients": sorted(losses), "rejected": rejected,
            "train_loss": self._mean_loss(losses),
        }
        eval_s = 0.0
        if self._eval_due(round_idx):
            t0 = time.perf_counter()
            record["eval"] = self.evaluate()
            eval_s = time.perf_counter() - t0
        record["bytes"] = self.server.ledger.totals(round_idx=round_idx)
        total = time.perf_counter() - start
        record["seconds"] = {"round": total, "train": train_s,
                             "eval": eval_s}
        return record

    def evaluate(self) -> dict[str, float]:
        fed = self.fed
        load_adapter_state(fed.model, self.server.state)
        return evaluate(fed.model, fed.test, fed.task.metrics,
                        batch_size=self.cfg["rolora.eval_batch_size"],
                        pad_token_id=fed.pad_token_id, device=fed.device)

    def _eval_due(self, round_idx: int) -> bool:
        last = round_idx == int(self.cfg["federate.total_round_num"])
        return last or round_idx % int(self.cfg["eval.freq"]) == 0

    def _mean_loss(self, losses: dict[int, float]) -> float | None:
        if not losses:
            return None
        rows = self.fed.client_indices
        total = sum(len(rows[c]) for c in losses)
        return sum(loss * len(rows[c]) for c, loss in losses.items()) / total


def summarize(sim: Simulation, records: list[dict[str, Any]],
              wall_seconds: float) -> dict[str, Any]:
    """Final and best metrics, bytes by role and direction, provenance."""
    fed, cfg = sim.fed, sim.cfg
    primary = fed.task.metrics[0]
    evals = [(r["round"], r["eval"]) for r in records if "eval" in r]
    best_round, best = max(evals, key=lambda e: e[1][primary])
    totals = sim.server.ledger.totals()
    return {
        "version": __version__,
        "method": cfg["federate.method"], "task": fed.task.name,
        "model": cfg.model_name, "rounds": len(records),
        "clients": cfg["federate.client_num"],
        "primary_metric": primary,
        "final": evals[-1][1], "best": {**best, "round": best_round},
        "bytes": totals,
        "bytes_up_total": sum(totals["up"].values()),
        "bytes_down_total": sum(totals["down"].values()),
        "wall_seconds": wall_seconds,
        "train_examples": len(fed.train), "test_examples": len(fed.test),
        "client_examples": {str(c): len(r) for c, r in
                            fed.client_indices.items()},
        "parameters": count_parameters(fed.model),
        "data_sources": fed.sources,
    }


def run(cfg: Config, *, on_round: RoundCallback | None = None,
        update_hook: UpdateHook | None = None) -> dict[str, Any]:
    """Run ``cfg`` to the end; returns the summary written to the outdir."""
    try:
        fed = build_federation(cfg)
    except ValueError as err:
        raise SetupError(str(err)) from err
    writer = RunWriter.create(cfg)
    sim = Simulation(fed, update_hook)
    start = time.perf_counter()
    records = []
    for round_idx in range(1, cfg["federate.total_round_num"] + 1):
        record = sim.run_round(round_idx)
        writer.append_round(record)
        records.append(record)
        if on_round is not None:
            on_round(record)
    save_adapter(fed.model, sim.server.state, writer.adapter_dir)
    summary = summarize(sim, records, time.perf_counter() - start)
    writer.write_summary(summary)
    return summary
