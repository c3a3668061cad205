"""The embedded runner: a whole federation in one process.

One frozen base model serves every client (DESIGN.md, invariant 6): a
client's state is only its adapter tensors, loaded into the shared model
for its local update. The protocol itself (what is sent down, what comes
up, validation, merging, byte accounting) is the core's AdapterServer,
the same code the FederatedScope plugin uses.

FedEx-LoRA's residual is the same for every client, so it is folded into
the one shared base (``W0 + total``, training/residual.py) after each
merge and on resume; each client's downlink still carries, and the ledger
counts, the residual that client would need, and its fingerprint covers
the shared total it trained on. FedSA-LoRA's B lives in each client's
adapter state, across rounds and in the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from federatedscope_rolora import __version__
from federatedscope_rolora.config import Config, config_warnings
from federatedscope_rolora.core.methods import RoundPlan
from federatedscope_rolora.core.roles import RESIDUAL, role_of
from federatedscope_rolora.core.sampling import derive_seed, sample_clients
from federatedscope_rolora.core.server import (
    AdapterServer,
    ClientUpdate,
    RoundFailed,
    build_update,
    require_received,
)
from federatedscope_rolora.core.validation import InvalidUpdate
from federatedscope_rolora.runners.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    data_differences,
    restore_rng,
    resume_point,
    save_checkpoint,
)
from federatedscope_rolora.runners.outputs import (
    RunDirLock,
    RunWriter,
    check_outdir,
    read_metrics_head,
    refuse_existing_run,
    round_results,
    write_files_durably,
)
from federatedscope_rolora.runners.setup import (
    Federation,
    build_federation,
    prefix_summary,
)
from federatedscope_rolora.training.local import evaluate, local_train
from federatedscope_rolora.training.metrics import mean_over_clients
from federatedscope_rolora.training.models import (
    count_parameters,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
    set_trainable,
)
from federatedscope_rolora.training.residual import (
    fold_residual,
    save_personal,
    save_residual,
)

log = logging.getLogger("federatedscope_rolora")

State = dict[str, torch.Tensor]
RoundCallback = Callable[[dict[str, Any]], None]
# Test hook: may replace a client's update, stall or raise before it is
# sent, as a faulty client would (see runners/faults.py).
UpdateHook = Callable[[ClientUpdate], ClientUpdate]
# Test hook: may change a client's adapter after its local training, as a
# buggy client would (runners/faults.py, ``drift``).
StateHook = Callable[[RoundPlan, int, State], None]


class SetupError(ValueError):
    """The run could not start: bad data, model or split. Nothing was
    written."""


class Simulation:
    """Server, clients' adapter states and the shared model of one run."""

    def __init__(self, fed: Federation,
                 update_hook: UpdateHook | None = None,
                 state_hook: StateHook | None = None) -> None:
        self.fed = fed
        self.cfg = fed.cfg
        self.server = AdapterServer(fed.method,
                                    get_adapter_state(fed.model),
                                    fed.cfg["rolora.weighting"],
                                    scaling=fed.scaling)
        self.clients: dict[int, State] = {}
        # What a client builds itself before first contact: the seeded
        # frozen head, as the shared model holds it now.
        self.built = {k: v.clone() for k, v in self.server.state.items()
                      if k in self.server.client_built}
        self.update_hook = update_hook
        self.state_hook = state_hook

    def participants(self, round_idx: int) -> list[int]:
        return sample_clients(self.cfg["federate.client_num"], round_idx,
                              self.cfg["seed"],
                              self.cfg["federate.sample_client_rate"],
                              self.cfg["federate.sample_client_num"])

    def client_round(self, client_id: int, plan: RoundPlan
                     ) -> tuple[ClientUpdate, float]:
        """Sync, train and package one client's update; also returns the
        seconds spent in local training alone."""
        fed = self.fed
        state = self.clients.setdefault(
            client_id, {k: v.clone() for k, v in self.built.items()})
        payload = self.server.downlink(client_id, plan.round_idx)
        # the residual is already in the shared base (fold_base)
        state.update({k: v for k, v in payload.items()
                      if role_of(k) != RESIDUAL})
        load_adapter_state(fed.model, state)
        set_trainable(fed.model, plan.trained_keys(state))
        rows = fed.client_indices[client_id]
        start = time.perf_counter()
        result = local_train(
            fed.model, fed.train, rows, fed.local,
            seed=derive_seed("local", self.cfg["seed"], plan.round_idx,
                             client_id),
            pad_token_id=fed.pad_token_id, device=fed.device,
            cache=fed.prefix)
        train_s = time.perf_counter() - start
        trained = get_adapter_state(fed.model)
        if self.state_hook is not None:
            self.state_hook(plan, client_id, trained)
        self.clients[client_id] = trained
        update = build_update(client_id, plan,
                              {**trained, **self.shared_residual()},
                              len(rows), result.loss)
        if self.update_hook is not None:
            update = self.update_hook(update)
        return update, train_s

    def run_round(self, round_idx: int) -> dict[str, Any]:
        """One round: every participant trains, the server merges what it
        accepted, and the global adapter is evaluated every ``eval.freq``
        rounds. A client that raises, is late or sends an invalid update
        is left out with its reason; RoundFailed if fewer than
        ``rolora.min_received`` updates remain."""
        start = time.perf_counter()
        plan = self.server.plan(round_idx)
        train_s = 0.0
        losses: dict[int, float] = {}
        rejected: dict[int, str] = {}
        for client_id in self.participants(round_idx):
            update, reason, seconds = self._collect(client_id, plan)
            train_s += seconds
            if update is not None:
                losses[client_id] = update.train_loss
                continue
            rejected[client_id] = " ".join(reason.split())
            log.warning("round %d: client %d left out: %s", round_idx,
                        client_id, rejected[client_id])
        require_received(round_idx, len(losses),
                         self.cfg["rolora.min_received"], rejected)
        self.server.aggregate(round_idx)
        self.fold_base()
        record: dict[str, Any] = {
            "round": round_idx, "phase": plan.phase,
            "trained": sorted(plan.trained_roles),
            "clients": sorted(losses), "rejected": rejected,
            "train_loss": self._mean_loss(losses),
            **self.server.last_gap.record(),
        }
        eval_s = 0.0
        if self._eval_due(round_idx):
            t0 = time.perf_counter()
            record["eval"] = self.evaluate()
            if self.fed.client_test:
                record["eval_per_client"] = \
                    self.evaluate_per_client(round_idx)
            eval_s = time.perf_counter() - t0
        record["bytes"] = self.server.ledger.totals(round_idx=round_idx)
        total = time.perf_counter() - start
        # Everything that is neither local training nor evaluation is the
        # runner's own cost: syncing, packaging, validation, averaging.
        record["seconds"] = {"round": total, "train": train_s,
                             "eval": eval_s,
                             "overhead": total - train_s - eval_s}
        return record

    def _collect(self, client_id: int, plan: RoundPlan
                 ) -> tuple[ClientUpdate | None, str, float]:
        """Run one client and hand its update to the server: the update
        if it was accepted, else None and why it was left out; and the
        client's training time.

        In one process a client cannot be stopped while it runs, so the
        deadline is checked when it returns: a late update is dropped.
        """
        start = time.perf_counter()
        try:
            update, train_s = self.client_round(client_id, plan)
        # A client's failure is the client's, never the round's.
        except Exception as err:
            log.debug("client %d failed", client_id, exc_info=True)
            self.server.refuse(client_id, plan.round_idx)
            return None, f"raised {type(err).__name__}: {err}", 0.0
        took = time.perf_counter() - start
        deadline = float(self.cfg["rolora.client_deadline_s"])
        if deadline > 0 and took > deadline:
            self.server.refuse(client_id, plan.round_idx, update.tensors)
            return None, (f"late: took {took:.2f} s, past the "
                          f"rolora.client_deadline_s of {deadline:g} s"), \
                train_s
        try:
            self.server.receive(update)  # refuses what it refuses itself
        except InvalidUpdate as err:
            return None, f"invalid update: {err}", train_s
        return update, "", train_s

    def shared_residual(self) -> dict[str, torch.Tensor]:
        """FedEx-LoRA's residual totals in the shared base ({} for the
        other methods): the server's."""
        book = self.server.residual
        return dict(book.total) if book is not None else {}

    def fold_base(self) -> None:
        """Fold the server's residual into the one shared base."""
        if self.server.residual is not None:
            fold_residual(self.fed.model, self.server.residual.total)

    def save_outputs(self, adapter_dir: Path) -> None:
        """The global adapter in PEFT's format, and what it cannot hold:
        FedEx-LoRA's residual, each FedSA-LoRA client's own B."""
        save_adapter(self.fed.model, self.server.state, adapter_dir)
        if self.server.residual is not None:
            save_residual(self.server.residual.total, adapter_dir)
        kept = self.server.plan(1).kept_roles
        if kept:  # each client's as it is scored (after a refusal: the
            # server's, which its next sync would give it back)
            save_personal({c: {k: v for k, v in
                               self.client_model_state(c).items()
                               if role_of(k) in kept}
                           for c in sorted(self.clients)}, adapter_dir)

    def evaluate(self) -> dict[str, float]:
        fed = self.fed
        load_adapter_state(fed.model, self.server.state)
        return evaluate(fed.model, fed.test, fed.task.metrics,
                        batch_size=self.cfg["rolora.eval_batch_size"],
                        pad_token_id=fed.pad_token_id, device=fed.device,
                        cache=fed.prefix)

    def client_model_state(self, client_id: int,
                           payload: dict[str, torch.Tensor] | None = None
                           ) -> dict[str, torch.Tensor]:
        """The adapter client ``client_id`` would use now: its own (the
        seeded head alone if it was never drawn) updated with what the
        server would send it next (``payload``, by default
        ``peek_downlink``). FedSA-LoRA: the server's A with the client's
        own B once it holds one (the shared initial B again after a
        refusal, as its next sync would give it)."""
        if payload is None:
            payload = self.server.peek_downlink(
                client_id, self.server.aggregated_round + 1)
        own = self.clients.get(client_id, self.built)
        # the residual is the server's, already in the shared base
        return {**own, **{k: v for k, v in payload.items()
                          if role_of(k) != RESIDUAL}}

    def evaluate_per_client(self, round_idx: int) -> dict[str, Any]:
        """Each client's model on its own test share (same splitter as
        its train share): the example-weighted and the plain mean over
        clients with a test row, never mixed with the global score.

        Every client 1..N is sent what it lacks for its model
        (``eval_downlink``, counted as the round's ``eval_down``), as the
        FederatedScope plugin sends it; one with no test row scores
        nothing and is left out of the means."""
        fed = self.fed
        scores: dict[int, tuple[dict[str, float], int]] = {}
        for client_id, data in sorted(fed.client_test.items()):
            payload = self.server.eval_downlink(client_id, round_idx)
            if len(data) == 0:
                continue
            load_adapter_state(fed.model,
                               self.client_model_state(client_id, payload))
            scores[client_id] = (evaluate(
                fed.model, data, fed.task.metrics,
                batch_size=self.cfg["rolora.eval_batch_size"],
                pad_token_id=fed.pad_token_id, device=fed.device,
                cache=fed.prefix), len(data))
        return mean_over_clients(scores)

    def _eval_due(self, round_idx: int) -> bool:
        last = round_idx == int(self.cfg["federate.total_round_num"])
        return last or round_idx % int(self.cfg["eval.freq"]) == 0

    def _mean_loss(self, losses: dict[int, float]) -> float | None:
        if not losses:
            return None
        rows = self.fed.client_indices
        total = sum(len(rows[c]) for c in losses)
        return sum(loss * len(rows[c]) for c, loss in losses.items()) / total

    def snapshot(self, round_idx: int, phase: str | None,
                 metrics_lines: int, wall_seconds: float) -> Checkpoint:
        """Everything needed to continue after ``round_idx``."""
        return Checkpoint(
            round_idx=round_idx, phase=phase, config=dict(self.cfg),
            server=self.server.state_dict(),
            clients={c: dict(s) for c, s in self.clients.items()},
            rng=capture_rng(), metrics_lines=metrics_lines,
            wall_seconds=wall_seconds, data=dict(self.fed.digests),
            model=self.fed.model_digest)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt``; CheckpointError if it does not fit this
        model's adapter (the config check let it through)."""
        try:
            self.server.load_state_dict(ckpt.server)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint does not fit this run: "
                                  f"{err}") from err
        reference = self.server.state
        for client, state in ckpt.clients.items():
            missing = sorted(set(reference) - set(state))
            if missing:   # a client holds its whole adapter
                raise CheckpointError(
                    f"checkpoint: client {client}'s adapter lacks "
                    f"{missing[0]}" + (f" and {len(missing) - 1} more"
                                       if len(missing) > 1 else ""))
            for key, value in state.items():
                ref = reference.get(key)
                if ref is None or value.shape != ref.shape or \
                        value.dtype != ref.dtype:
                    raise CheckpointError(f"checkpoint: client {client}'s "
                                          f"{key} does not fit this "
                                          "model's adapter")
        self.clients = {c: dict(s) for c, s in ckpt.clients.items()}
        self.fold_base()
        restore_rng(ckpt.rng)


def summarize(sim: Simulation, records: list[dict[str, Any]],
              wall_seconds: float) -> dict[str, Any]:
    """Final and best metrics, bytes by role and direction, provenance."""
    fed, cfg = sim.fed, sim.cfg
    return {
        "version": __version__,
        "method": cfg["federate.method"], "task": fed.task.name,
        "labels": list(fed.task.label_names),
        "text_columns": list(fed.task.text_columns),
        "model": cfg.model_name,
        "clients": cfg["federate.client_num"],
        **round_results(records, fed.task.metrics[0]),
        "wall_seconds": wall_seconds,
        "train_examples": len(fed.train), "test_examples": len(fed.test),
        "client_examples": {str(c): len(r) for c, r in
                            fed.client_indices.items()},
        "parameters": count_parameters(fed.model),
        "data_sources": fed.sources,
        "data_digest": fed.digests,
        "model_digest": fed.model_digest,
        "base_digest": fed.base_digest,
        "prefix_cache": prefix_summary(cfg, fed.prefix),
    }


def resume_checks(cfg: Config
                  ) -> tuple[Checkpoint | None, list[dict[str, Any]]]:
    """What a resume of ``cfg.run_dir`` checks before it builds anything
    (reads only): the checkpoint matches the config, the metrics lines
    it counts are whole records, and the last round can be summarised.
    Returns the checkpoint and those records."""
    ckpt = resume_point(cfg)
    lines = ckpt.metrics_lines if ckpt is not None else 0
    records = read_metrics_head(cfg.run_dir, lines)
    total = cfg["federate.total_round_num"]
    if records and len(records) == total and "eval" not in records[-1]:
        raise CheckpointError(f"cannot resume {str(cfg.run_dir)!r}: round "
                              f"{total} was not evaluated; set "
                              "federate.total_round_num above it")
    return ckpt, records


def check_same_data(cfg: Config, ckpt: Checkpoint | None,
                    digests: dict[str, str]) -> None:
    """CheckpointError if the data ``digests`` (as the run would deal it
    now) differ from those the checkpoint ran on."""
    if ckpt is not None and (changed := data_differences(ckpt, digests)):
        raise CheckpointError(
            f"cannot resume {str(cfg.run_dir)!r}: its "
            f"{' and '.join(changed)} differ from the examples it ran "
            f"on to round {ckpt.round_idx}; the files under data.root "
            "(or how they are read) changed since. Restore them, or "
            "start a new run")


def check_same_model(cfg: Config, ckpt: Checkpoint | None,
                     digest: str) -> None:
    """CheckpointError if the model ``cfg`` builds now (its ``digest``,
    setup.model_fingerprint) is not the one the checkpoint ran on."""
    if ckpt is not None and ckpt.model and ckpt.model != digest:
        raise CheckpointError(
            f"cannot resume {str(cfg.run_dir)!r}: the model built from "
            f"model.type {cfg.model_name!r} differs from the one it ran "
            f"on to round {ckpt.round_idx} (fingerprint "
            f"{ckpt.model[:12]}... in the checkpoint, "
            f"{digest[:12]}... now); its files changed since. "
            "Restore them, or start a new run")


def _start(cfg: Config, resume: bool, update_hook: UpdateHook | None,
           state_hook: StateHook | None = None
           ) -> tuple[Simulation, RunWriter, list[dict[str, Any]], float]:
    """Check everything, then open the outdir: a run that cannot start
    (bad data or model, a checkpoint that does not match) writes
    nothing. Returns the records and seconds of the rounds already run.
    """
    if not resume:
        refuse_existing_run(cfg.run_dir)   # before a slow build
    check_outdir(cfg.run_dir)   # a resume writes there too
    lock = RunDirLock(cfg.run_dir)
    lock.acquire()     # before the checkpoint is read: no one writes it
    try:
        ckpt, records = resume_checks(cfg) if resume else (None, [])
        for warning in config_warnings(cfg):
            log.warning("%s", warning)
        try:
            fed = build_federation(cfg)
        except ValueError as err:
            raise SetupError(str(err)) from err
        check_same_data(cfg, ckpt, fed.digests)
        check_same_model(cfg, ckpt, fed.model_digest)
        sim = Simulation(fed, update_hook, state_hook)
        if ckpt is not None:
            sim.restore(ckpt)
            log.info("resuming %s after round %d", cfg.run_dir,
                     ckpt.round_idx)
        # the records are the checkpoint's metrics lines, one a line
        writer = RunWriter.reopen(cfg, len(records), lock) if resume \
            else RunWriter.create(cfg, lock)
    except BaseException:
        lock.release()
        raise
    return sim, writer, records, ckpt.wall_seconds if ckpt else 0.0


def run(cfg: Config, *, on_round: RoundCallback | None = None,
        update_hook: UpdateHook | None = None,
        state_hook: StateHook | None = None,
        resume: bool = False) -> dict[str, Any]:
    """Run ``cfg`` to the end, checkpointing after every round; with
    ``resume``, continue the run in ``cfg.run_dir`` from its checkpoint.
    Returns the summary written to the outdir."""
    sim, writer, records, before = _start(cfg, resume, update_hook,
                                          state_hook)
    try:
        return _rounds(cfg, sim, writer, records, before, on_round)
    finally:
        writer.close()


def _rounds(cfg: Config, sim: Simulation, writer: RunWriter,
            records: list[dict[str, Any]], before: float,
            on_round: RoundCallback | None) -> dict[str, Any]:
    """The rounds after ``records`` to the last, then the adapter and
    the summary."""
    start = time.perf_counter()
    for round_idx in range(len(records) + 1,
                           cfg["federate.total_round_num"] + 1):
        try:
            record = sim.run_round(round_idx)
        except RoundFailed as err:
            kept = f"The checkpoint of round {round_idx - 1} is intact" \
                if round_idx > 1 else "No round was finished"
            raise RoundFailed(f"{err}. {kept}: fix the cause, then "
                              f"continue with --resume {writer.run_dir} "
                              "(a cause in the config, such as the "
                              "learning rate, needs a new run: another "
                              "outdir, or this one removed)") from None
        writer.append_round(record)
        records.append(record)
        save_checkpoint(writer.run_dir, sim.snapshot(
            round_idx, record["phase"], len(records),
            before + time.perf_counter() - start))
        if on_round is not None:
            on_round(record)
    write_files_durably(writer.adapter_dir, sim.save_outputs)
    summary = summarize(sim, records, before + time.perf_counter() - start)
    writer.write_summary(summary)
    return summary
