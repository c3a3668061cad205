"""The client of ``federate.method`` rolora, lora, ffa_lora, fedex_lora,
flexlora and fedsa_lora.

A client keeps its own copy of the adapter (a few tensors), so it is
right whether it has a model of its own (distributed mode,
``share_local_model: False``) or shares the server's one model with every
other client (``share_local_model: True``): before each local update it
loads its whole adapter into the model. The round's plan comes from the
server's round in the message (FederatedScope's 0-based ``state`` + 1),
and the update it sends is the core's ``build_update``: the trained keys
and the fingerprint of the frozen ones. A FedEx-LoRA client also keeps
its residual totals (core/residual.py) and folds them into the model's
base before training; a FedSA-LoRA client keeps its own B in its adapter,
which the server never sends again.

Per-client evaluation (``evaluate`` messages): the client applies what
the server sent to a copy of its adapter and residual, scores that model
(what it would train from next round; FedSA-LoRA: the server's A with its
own B) on its own test share, and sends the trainer's ``test_*`` results
up (``metrics``). Its training state, and the random numbers its
training draws, are left as they were. At the end a FedSA-LoRA client
saves the B it kept, which no server holds, in its run's ``adapter/``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from federatedscope.core.message import Message
from federatedscope.core.workers import Client

from federatedscope_rolora.core.residual import apply_payload
from federatedscope_rolora.core.roles import RESIDUAL, role_of
from federatedscope_rolora.core.server import build_update
from federatedscope_rolora.fs.cfg_rolora import (
    PROCESS_MAY_DIFFER,
    check_client_config,
    run_config,
    schema_view,
    shared_settings,
    with_digests,
)
from federatedscope_rolora.fs.data import data_share, dealt_digest
from federatedscope_rolora.fs.wire import (
    pack_failure,
    pack_scores,
    pack_update,
    unpack_payload,
)
from federatedscope_rolora.runners.faults import (
    FAULTS_ENV,
    WIRE_FAULT_KINDS,
    drift_hook,
    parse_faults,
)
from federatedscope_rolora.runners.outputs import (
    ADAPTER_DIR,
    write_files_durably,
)
from federatedscope_rolora.runners.setup import (
    method_from_config,
    model_fingerprint,
)
from federatedscope_rolora.training.models import (
    get_adapter_state,
    load_adapter_state,
)
from federatedscope_rolora.training.residual import (
    fold_residual,
    personal_file_of,
    save_personal,
)

logger = logging.getLogger("federatedscope.rolora")


class RoloraClient(Client):  # type: ignore[misc]
    def __init__(self, ID: int = -1, server_id: Any = None, state: int = -1,
                 config: Any = None, data: Any = None, model: Any = None,
                 device: str = "cpu", strategy: Any = None,
                 is_unseen_client: bool = False, *args: Any,
                 **kwargs: Any) -> None:
        super().__init__(ID, server_id, state, config, data, model, device,
                         strategy, is_unseen_client, *args, **kwargs)
        if config is None:  # FederatedScope probes an empty instance
            return
        check_client_config(ID, config, run_config())
        self.method = method_from_config(schema_view(config))
        # sent up with every update: the server checks them (a
        # distributed client reads its own YAML)
        self.settings = with_digests(
            shared_settings(config, PROCESS_MAY_DIFFER),
            model_fingerprint(self.model, base_only=True), dealt_digest())
        self.adapter: dict[str, torch.Tensor] = {}
        # Test-only, as in the embedded runner's CLI: ``drift`` entries
        # of ROLORA_TEST_FAULTS change this client's frozen tensors, the
        # wire ones how it sends its upload (``_send_update``).
        self.faults = parse_faults(os.environ.get(FAULTS_ENV, ""),
                                   kinds=("drift", *WIRE_FAULT_KINDS))
        self.drift = drift_hook(self.faults)
        self.residual: dict[str, torch.Tensor] = {}
        # FedSA-LoRA: the server's copy of the kept tensors (the shared
        # initial B), sent on first contact and on every re-sync
        self.kept_from_server: dict[str, torch.Tensor] = {}

    def callback_funcs_for_model_para(self, message: Message) -> None:
        """Sync with what the server sent, train the round's keys, send
        them up; an error in the local update is sent up as the client's
        failure, and the round goes on without it."""
        round_idx = int(message.state) + 1
        self.state = message.state
        start = time.perf_counter()
        try:
            content = self._local_update(message, round_idx)
        except Exception as err:
            logger.exception("client %d failed in round %d", self.ID,
                             round_idx)
            content = pack_failure(err, time.perf_counter() - start)
        self._send_update(message, round_idx, content)

    def _send_update(self, message: Message, round_idx: int, content: Any
                     ) -> None:
        """Send ``content`` to the server, as a test fault says where
        one is set for this round: twice, stamped for the next round, or
        again under another client's ID."""
        fault, _, arg = self.faults.get((round_idx, int(self.ID)),
                                        "").partition("=")
        stamp = self.state + 1 if fault == "early" else self.state
        sends = [(self.ID, stamp)]
        if fault == "twice":
            sends.append(sends[0])
        elif fault == "spoof":
            sends.append((int(arg), self.state))
        for sender, stamp in sends:
            self.comm_manager.send(Message(
                msg_type="model_para", sender=sender,
                receiver=[message.sender], state=stamp,
                timestamp=self._gen_timestamp(
                    init_timestamp=message.timestamp,
                    instance_number=content[0]),
                content=content))

    def _local_update(self, message: Message, round_idx: int) -> Any:
        payload = unpack_payload(message.content)
        self.adapter, self.residual = self._synced(payload)
        self._load(self.adapter, self.residual)
        plan = self.method.plan(round_idx)
        sent_kept = {k: v.clone() for k, v in payload.items()
                     if role_of(k) in plan.kept_roles}
        if sent_kept:
            self.kept_from_server = sent_kept
        self.trainer.set_plan(plan)
        start = time.perf_counter()
        _, _, results = self.trainer.train()
        seconds = time.perf_counter() - start
        logger.info(self._monitor.format_eval_res(
            results, rnd=self.state, role=f"Client #{self.ID}",
            return_raw=True))
        self.adapter = get_adapter_state(self.model)
        self.drift(plan, int(self.ID), self.adapter)
        update = build_update(self.ID, plan,
                              {**self.adapter, **self.residual},
                              int(self.trainer.ctx.num_train_data),
                              float(results.get("train_avg_loss",
                                                float("nan"))))
        return pack_update(update, seconds, self.settings,
                           data_share(self._cfg, int(self.ID)))

    def _synced(self, payload: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """New copies of this client's adapter and residual totals with
        what the server sent applied."""
        adapter = {**self.adapter, **{k: v for k, v in payload.items()
                                      if role_of(k) != RESIDUAL}}
        residual = apply_payload(self.residual, {
            k: v for k, v in payload.items() if role_of(k) == RESIDUAL})
        return adapter, residual

    def _load(self, adapter: dict[str, torch.Tensor],
              residual: dict[str, torch.Tensor]) -> None:
        """The model this client trains or scores: ``adapter`` on the
        base with ``residual`` folded in (FedEx-LoRA)."""
        load_adapter_state(self.model, adapter)
        if residual:
            fold_residual(self.model, residual)

    def callback_funcs_for_evaluate(self, message: Message) -> None:
        """Score the model the server's message makes (a copy: nothing
        of the training state changes) on this client's test share; an
        error is sent up as the client's, and the run goes on."""
        round_idx = int(message.state) + 1
        try:
            content = pack_scores(round_idx,
                                  self._score(message.content, round_idx))
        except Exception as err:
            logger.exception("client %d failed to evaluate round %d",
                             self.ID, round_idx)
            content = pack_scores(round_idx, {},
                                  f"{type(err).__name__}: {err}")
        self.comm_manager.send(Message(
            msg_type="metrics", sender=self.ID, receiver=[message.sender],
            state=message.state, timestamp=message.timestamp,
            content=content))

    def _score(self, content: Any, round_idx: int) -> dict[str, float]:
        payload = unpack_payload(content)
        if not int(self.trainer.ctx.get("num_test_data") or 0):
            return {}
        adapter, residual = self._synced(payload)
        # evaluation draws a seed for its data loader: keep training's
        # random numbers as they would be without it
        with torch.random.fork_rng(devices=[]):
            self._load(adapter, residual)
            results = {k: float(v) for k, v in
                       self.trainer.evaluate("test").items()}
        self.trainer.take_eval_results()
        logger.info(self._monitor.format_eval_res(
            results, rnd=round_idx - 1,
            role=f"Client #{self.ID} (own model)", return_raw=True))
        return results

    def callback_funcs_for_finish(self, message: Message) -> None:
        logger.info("client %d: finished after round %s", self.ID,
                    message.state)
        content = message.content if isinstance(message.content, dict) \
            else {}
        self._save_personal(int(self.ID) in
                            content.get("kept_untrusted", []))
        self._monitor.finish_fl()

    def _save_personal(self, untrusted: bool) -> None:
        """FedSA-LoRA: the B this client kept, which no server holds, in
        ``adapter/personal_client<ID>.safetensors`` of its run (in
        standalone mode, the server's) as ``<ID>/<key>``; a client never
        drawn kept none. ``untrusted`` (refused since it last held its
        B): the server's copy, which its model is scored with and its
        next sync would give it, as in the embedded runner."""
        kept = self.method.plan(1).kept_roles
        own = {k: v for k, v in self.adapter.items() if role_of(k) in kept}
        if untrusted and own:
            own = dict(self.kept_from_server)
        if not own:
            return
        write_files_durably(
            Path(self._cfg.outdir) / ADAPTER_DIR,
            lambda d: save_personal({int(self.ID): own}, d,
                                    personal_file_of(int(self.ID))))
