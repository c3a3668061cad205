"""The server of ``federate.method`` rolora, lora, ffa_lora, fedex_lora,
flexlora and fedsa_lora.

FederatedScope's ``Server`` with the core's ``AdapterServer`` in charge of
the protocol, the same code as the embedded runner's:

- broadcast: the round's participants are the core's pure function of
  (seed, round) with FederatedScope's ``sample_client_num``, and each gets
  its own message with what it lacks (the whole adapter on first contact,
  the factor averaged last round, whatever changed while it was away);
- uploads: each is taken as it arrives, as the embedded runner takes it,
  and validated (keys, shapes, dtypes, finite values, frozen-factor
  fingerprint, deadline). FederatedScope's buffer, which decides when a
  round closes, holds one answer from each drawn client of the open
  round; any other upload is refused at once and closes nothing;
- aggregation: the trained keys of the accepted updates are averaged;
  FederatedScope's aggregator is replaced by one over the core;
- evaluation: the global adapter (FedEx-LoRA: on the base with the
  residual folded in) on the server's test set; every round is written to
  ``metrics.jsonl`` with exact bytes by role and direction and the
  aggregation gap;
- per-client evaluation (``rolora.per_client_eval``; auto: FedSA-LoRA):
  at each evaluation, every client 1..N gets an ``evaluate`` message with
  what its next downlink would send (``AdapterServer.eval_downlink``,
  counted as ``eval_down``; the training downlink is unchanged), scores
  that model (FedSA-LoRA: the server's A with its own B) on its own test
  share and replies with its ``test_*`` results; the round's line gets
  ``eval_per_client`` (``mean_over_clients``, as the embedded runner's)
  once all have answered. The last round's global evaluation, which
  ends the run, waits for them;
- the end: ``summary.json`` and the whole adapter in PEFT format in the
  outdir; ``finish`` carries no weights.

FederatedScope's round (``state``) counts from 0; the core's from 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from federatedscope.core.aggregators.aggregator import Aggregator
from federatedscope.core.message import Message
from federatedscope.core.workers import Server

from federatedscope_rolora.core.sampling import sample_clients
from federatedscope_rolora.core.server import (
    AdapterServer,
    require_received,
)
from federatedscope_rolora.core.validation import InvalidUpdate
from federatedscope_rolora.fs import prefix
from federatedscope_rolora.fs.cfg_rolora import (
    PROCESS_MAY_DIFFER,
    fs_task,
    model_name,
    schema_view,
    shared_settings,
    with_digests,
)
from federatedscope_rolora.fs.data import dealt_digest, test_digest
from federatedscope_rolora.fs.records import RunRecorder
from federatedscope_rolora.fs.wire import (
    ClientFailed,
    pack_eval_payload,
    unpack_scores,
    unpack_update,
    upload_tensors,
)
from federatedscope_rolora.runners.outputs import (
    ADAPTER_DIR,
    PLUGIN_CONFIG_FILE,
    write_config_atomic,
    write_files_durably,
)
from federatedscope_rolora.runners.setup import (
    lora_scaling,
    method_from_config,
    model_fingerprint,
    per_client_eval,
    prefix_summary,
)
from federatedscope_rolora.training.models import (
    count_parameters,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
)
from federatedscope_rolora.training.residual import (
    fold_residual,
    save_residual,
)

logger = logging.getLogger("federatedscope.rolora")


@contextmanager
def _without_fs_aggregator_warning() -> Iterator[None]:
    """FederatedScope warns that it has no aggregator for the method and
    builds a default one, which this server replaces straight away."""
    fs_logger = logging.getLogger(
        "federatedscope.core.auxiliaries.aggregator_builder")
    drop = _DropMessage("is not implemented. Will use default one")
    fs_logger.addFilter(drop)
    try:
        yield
    finally:
        fs_logger.removeFilter(drop)


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


class AdapterAggregator(Aggregator):  # type: ignore[misc]
    """FederatedScope's aggregator slot, filled by the core: averages the
    round's trained keys and installs the whole global adapter in the
    server's model; saves it in PEFT format (``federate.save_to``)."""

    def __init__(self, server: AdapterServer, model: torch.nn.Module
                 ) -> None:
        super().__init__()
        self.server = server
        self.model = model

    def aggregate(self, agg_info: dict[str, Any]) -> dict[str, Any]:
        merged = self.server.aggregate(int(agg_info["round"]))
        load_adapter_state(self.model, self.server.state)
        if self.server.residual is not None:
            fold_residual(self.model, self.server.residual.total)
        return merged

    def save_model(self, path: str, cur_round: int = -1) -> None:
        save_adapter(self.model, self.server.state, Path(path))
        if self.server.residual is not None:
            save_residual(self.server.residual.total, Path(path))

    def load_model(self, path: str) -> int:
        raise NotImplementedError("the rolora plugin does not restore "
                                  "runs (federate.restore_from)")


class RoloraServer(Server):  # type: ignore[misc]
    is_finish: bool
    cur_timestamp: float
    def __init__(self, ID: int = -1, state: int = 0, config: Any = None,
                 data: Any = None, model: Any = None, client_num: int = 5,
                 total_round_num: int = 10, device: str = "cpu",
                 strategy: Any = None, unseen_clients_id: Any = None,
                 **kwargs: Any) -> None:
        with _without_fs_aggregator_warning():
            super().__init__(ID, state, config, data, model, client_num,
                             total_round_num, device, strategy,
                             unseen_clients_id, **kwargs)
        if config is None:  # FederatedScope probes an empty instance
            return
        self.settings = schema_view(config)
        self.task = fs_task(config)
        # before training (FedEx-LoRA's residual is folded in at the end)
        self.base_digest = model_fingerprint(self.model, base_only=True)
        self.shared = with_digests(
            shared_settings(config, PROCESS_MAY_DIFFER), self.base_digest,
            dealt_digest())
        self.adapter_server = AdapterServer(
            method_from_config(self.settings),
            get_adapter_state(self.model), self.settings["rolora.weighting"],
            scaling=lora_scaling(self.settings))
        self.aggregator = AdapterAggregator(self.adapter_server, self.model)
        self.aggregators = [self.aggregator]
        self.recorder = RunRecorder(Path(config.outdir),
                                    self.adapter_server.ledger,
                                    self.task.metrics)
        self._outputs_written = False
        self.per_client_eval = per_client_eval(self.settings)
        # the last round's global evaluation waits for the clients' scores
        self._final_eval_waits = False
        self._open_round(set())
        # data share -> the client that trains on it
        self._share_owner: dict[int, int] = {}

    # --- rounds -------------------------------------------------------
    def participants(self, round_idx: int, sample_client_num: int
                     ) -> list[int]:
        """FederatedScope's count, the core's draw: the embedded runner
        draws the same clients in the same round."""
        count = sample_client_num if 0 < sample_client_num \
            < self.client_num else self.client_num
        return sample_clients(self.client_num, round_idx,
                              self.settings["seed"],
                              sample_client_num=count)

    def broadcast_model_para(self, msg_type: str = "model_para",
                             sample_client_num: int = -1,
                             filter_unseen_clients: bool = True) -> None:
        if msg_type != "model_para":
            super().broadcast_model_para(msg_type, sample_client_num,
                                         filter_unseen_clients)
            return
        self._close_round()
        round_idx = self.state + 1
        receivers = self.participants(round_idx, sample_client_num)
        self.sampler.change_state(receivers, "working")
        for client_id in receivers:
            payload = self.adapter_server.downlink(client_id, round_idx)
            self.comm_manager.send(Message(
                msg_type="model_para", sender=self.ID,
                receiver=[client_id], state=self.state,
                timestamp=self.cur_timestamp, content=payload))
        self.recorder.open_round(self.adapter_server.plan(round_idx),
                                 receivers)
        self._open_round(set(receivers))

    def _open_round(self, drawn: set[int]) -> None:
        """The open round's participants, and its answers so far."""
        self._drawn = drawn
        self._losses: dict[int, tuple[float, int]] = {}
        self._rejected: dict[int, str] = {}
        self._train_seconds = 0.0
        # drawn clients that sent an upload of a past round: re-synced
        # once this round is merged (``_turn_away``)
        self._resync: set[int] = set()

    # --- uploads ----------------------------------------------------------
    def callback_funcs_model_para(self, message: Message) -> Any:
        """An upload. The first from each drawn client of the open round
        is its answer (``_take_answer``), whatever it holds, and goes into
        FederatedScope's buffer, whose count closes the round. Any other
        (from a client not drawn, a second one, one stamped for a past
        round) is refused at once (``_turn_away``) and closes nothing:
        FederatedScope's own handler let it fill the buffer, so the round
        closed early and a drawn client's update was dropped unrecorded.
        The rest of that handler serves what the plugin refuses
        (``asyn.use``, ``quantization``, ``federate.online_aggr``)."""
        if self.is_finish:
            return "finish"
        sender, stamp = message.sender, message.state
        why = self._unexpected(sender, stamp)
        if why is not None:
            self._turn_away(sender, message.content, why)
            return False
        self.sampler.change_state(sender, "idle")
        if isinstance(message.timestamp, (int, float)):
            self.cur_timestamp = max(self.cur_timestamp, message.timestamp)
        self._take_answer(sender, stamp, message.content)
        self.msg_buffer["train"].setdefault(self.state, {})[sender] = \
            message.content
        return self.check_and_move_on()

    def _unexpected(self, sender: Any, stamp: Any) -> str | None:
        """Why an upload is not an answer of the open round; None if
        it is."""
        round_idx = self.state + 1
        if self.state >= self.total_round_num:
            return "no round is open (the last one is over)"
        if sender not in self._drawn:
            return f"not drawn for round {round_idx}"
        if self._answered(sender):
            return f"a second upload in round {round_idx}"
        if not isinstance(stamp, int) or stamp < self.state:
            return (f"stamped for round {stamp + 1}, a past one"
                    if isinstance(stamp, int) else
                    f"stamped for no round ({stamp!r:.40})")
        return None

    def _answered(self, sender: Any) -> bool:
        """Whether ``sender``'s answer of the open round is in
        FederatedScope's buffer."""
        return sender in self.msg_buffer["train"].get(self.state, {})

    def _turn_away(self, sender: Any, content: Any, why: str) -> None:
        """Refuse an upload that answers nothing: what it carried is
        counted as refused traffic of the open round and named in its
        line (``unexpected``), and the sender is re-synced in full the
        next time it is drawn, as the core does after any refusal. A
        drawn client whose answer is still to come (this is a copy of a
        past round's) is re-synced once the round is merged: refused
        now, its answer, trained from this round's downlink, would be
        refused too, and whether it was depended on which came first."""
        round_idx = self.state + 1
        logger.warning("rolora round %d: upload from client %s refused: "
                       "%s", round_idx, sender, why)
        if self.state >= self.total_round_num or \
                not isinstance(sender, int):
            return
        tensors = upload_tensors(content)
        if sender in self._drawn and not self._answered(sender):
            self.adapter_server.ledger.record_refused(round_idx, sender,
                                                      tensors)
            self._resync.add(sender)
        else:
            self.adapter_server.refuse(sender, round_idx, tensors)
        self.recorder.unexpected(sender, why)

    def _take_answer(self, client_id: int, stamp: int, content: Any
                     ) -> None:
        """Validate a drawn client's answer and hand it to the core; a
        refused one (failed, late, invalid, stamped for a future round)
        leaves the client out of the round, its bytes counted."""
        round_idx = self.state + 1
        update = None
        in_core = False
        try:
            if stamp != self.state:
                raise InvalidUpdate(f"client {client_id}, round "
                                    f"{round_idx}: stamped for round "
                                    f"{stamp + 1}")
            update, seconds, share = unpack_update(client_id, round_idx,
                                                   content, self.shared)
            self._train_seconds += seconds
            self._check_deadline(seconds)
            self._check_share(client_id, round_idx, share)
            in_core = True
            self.adapter_server.receive(update)
        except InvalidUpdate as err:
            failed = isinstance(err, ClientFailed)
            self._rejected[client_id] = str(err) if failed \
                else f"invalid update: {err}"
            # receive() refuses what it refuses itself; what it never
            # saw is refused here
            if not in_core:
                self.adapter_server.refuse(
                    client_id, round_idx,
                    update.tensors if update is not None
                    else upload_tensors(content))
            logger.warning("rolora round %d: client %d left out: %s",
                           round_idx, client_id, self._rejected[client_id])
        else:
            self._losses[client_id] = (update.train_loss,
                                       update.num_examples)

    def _check_share(self, client_id: int, round_idx: int, share: int
                     ) -> None:
        """InvalidUpdate if the client trained on a data share another
        client trains on, or on another share than before: two
        distributed clients given the same ``distribute.data_idx``
        trained one share twice and left another out, without a word."""
        owner = self._share_owner.get(share, client_id)
        if owner != client_id:
            raise InvalidUpdate(
                f"client {client_id}, round {round_idx}: trained on data "
                f"share {share}, which is client {owner}'s; each client "
                f"needs its own share, one of 1..{self.client_num} "
                "(distribute.data_idx)")
        held = next((s for s, c in self._share_owner.items()
                     if c == client_id), share)
        if held != share:
            raise InvalidUpdate(
                f"client {client_id}, round {round_idx}: trained on data "
                f"share {share}, and on share {held} before")
        self._share_owner[share] = client_id

    def _perform_federated_aggregation(self) -> int:
        round_idx = self.state + 1
        losses = self._losses
        require_received(round_idx, len(losses),
                         self.settings["rolora.min_received"],
                         self._rejected)
        self.aggregator.aggregate({"round": round_idx})
        for client_id in sorted(self._resync):
            self.adapter_server.refuse(client_id, round_idx)
        self.recorder.trained(losses, dict(sorted(self._rejected.items())),
                              self._train_seconds,
                              self.adapter_server.last_gap.record())
        return len(losses)

    def _check_deadline(self, seconds: float) -> None:
        deadline = float(self.settings["rolora.client_deadline_s"])
        if deadline > 0 and seconds > deadline:
            raise ClientFailed(f"late: took {seconds:.2f} s, past the "
                               "rolora.client_deadline_s of "
                               f"{deadline:g} s")

    # --- evaluation -------------------------------------------------------
    def eval(self) -> None:
        """The global adapter on the server's test set and, with
        per-client evaluation, each client's own model on its test share
        (``evaluate`` messages); FederatedScope calls this after the
        aggregation of an evaluated round, with ``state`` already moved
        on to the round that aggregation finished (1-based)."""
        if not self.per_client_eval:
            self._global_eval()
            return
        round_idx = int(self.state)
        clients = list(range(1, self.client_num + 1))
        self.recorder.expect_scores(round_idx, clients)
        pickled = self._cfg.federate.mode.lower() == "distributed"
        for client_id in clients:
            payload = self.adapter_server.eval_downlink(client_id,
                                                        round_idx)
            self.comm_manager.send(Message(
                msg_type="evaluate", sender=self.ID, receiver=[client_id],
                state=round_idx - 1, timestamp=self.cur_timestamp,
                content=pack_eval_payload(payload, pickled)))
        if round_idx < self.total_round_num:
            self._global_eval()
        else:
            # FederatedScope's evaluation of the last round ends the run
            self._final_eval_waits = True

    def _global_eval(self) -> None:
        """FederatedScope's global evaluation, on the global adapter: a
        client sharing this model may have loaded its own."""
        load_adapter_state(self.model, self.adapter_server.state)
        if self.adapter_server.residual is not None:
            fold_residual(self.model, self.adapter_server.residual.total)
        super().eval()

    def callback_funcs_for_metrics(self, message: Message) -> bool:
        """A client's score of its own model; once the last round's are
        all in, the global evaluation that ends the run."""
        sender = message.sender
        if not isinstance(sender, int):
            logger.warning("rolora: dropped an evaluation from sender "
                           "%.40r, not a client ID", sender)
            return True
        try:
            round_idx, results, examples = unpack_scores(sender,
                                                         message.content)
        except InvalidUpdate as err:
            logger.warning("rolora: %s; it is left out of the per-client "
                           "score", err)
            stamp = message.state
            round_idx = stamp + 1 if isinstance(stamp, int) else -1
            results, examples = {}, 0
        done = self.recorder.scored(round_idx, sender, results, examples)
        if done and self._final_eval_waits and \
                round_idx >= self.total_round_num:
            self._final_eval_waits = False
            self._global_eval()
        return True

    # --- the end --------------------------------------------------------
    def _close_round(self) -> None:
        trainer = getattr(self, "trainer", None)
        results = trainer.take_eval_results() if trainer is not None \
            else {}
        self.recorder.close_round(results)

    def terminate(self, msg_type: str = "finish") -> None:
        """Write the outputs, then tell the clients; the message carries
        the round and the clients whose kept tensors the server no
        longer trusts (``kept_untrusted``), no weights (FederatedScope
        would send every weight of the model). FederatedScope calls this
        twice in distributed mode."""
        if self.is_finish:
            return
        self._write_outputs()
        self.is_finish = True
        self._monitor.finish_fl()
        self.comm_manager.send(Message(
            msg_type=msg_type, sender=self.ID,
            receiver=list(self.comm_manager.neighbors.keys()),
            state=self.state, timestamp=self.cur_timestamp,
            content={"round": int(self.state),
                     "kept_untrusted": self.adapter_server.kept_untrusted()}))

    def _write_outputs(self) -> None:
        if self._outputs_written:
            return
        self._outputs_written = True
        self._close_round()
        run_dir = Path(self._cfg.outdir)
        start = time.perf_counter()
        write_config_atomic(self.settings, run_dir / PLUGIN_CONFIG_FILE)
        write_files_durably(run_dir / ADAPTER_DIR,
                            lambda d: self.aggregator.save_model(str(d)))
        summary = self.recorder.write_summary({
            "method": self.settings["federate.method"],
            "task": self.task.name,
            "labels": list(self.task.label_names),
            "text_columns": list(self.task.text_columns),
            "model": model_name(self._cfg.model.type),
            "mode": self._cfg.federate.mode,
            "clients": self.client_num,
            "parameters": count_parameters(self.model),
            "base_digest": self.base_digest,
            "prefix_cache": prefix_summary(self.settings, prefix.current()),
            "data_digest": test_digest(),
        })
        logger.info("rolora: adapter saved to %s (%.2f s); bytes up %d, "
                    "down %d", run_dir / ADAPTER_DIR,
                    time.perf_counter() - start, summary["bytes_up_total"],
                    summary["bytes_down_total"])
