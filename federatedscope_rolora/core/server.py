"""The server's adapter state: what each client lacks, what it may send,
and how a round's updates are merged.

Framework-free, so the embedded runner and the FederatedScope plugin share
one implementation of the protocol:

1. ``downlink(client, t)``: the adapter tensors the client does not hold in
   their current version (everything on first contact but a frozen head,
   which every client builds itself from the seed; everything that
   changed while it was away, whatever it trained and sent last time,
   and everything after it was left out of a round; FedEx-LoRA's residual
   as core/residual.py says).
2. The client trains the keys of ``plan(t)`` and sends those it does not
   keep (FedSA-LoRA keeps its B) with the fingerprint of its frozen keys
   and, for FedEx-LoRA, of its base residual (``build_update``).
3. ``receive(update)`` checks that the client was sent this round's
   downlink (an update of a client left out of the draw, refused since,
   or stamped with another round is refused: its frozen half may still
   match), validates key set, shapes, dtypes, finiteness and the
   fingerprint, and keeps the update; ``refuse`` leaves a client out
   (invalid, late or failed), counts what it sent as refused traffic and
   forgets what it holds.
4. ``aggregate(t)`` merges the uploaded keys as the method says (core/
   methods.py), bumps their versions, adds FedEx-LoRA's residual to the
   ``ResidualBook`` and measures the round's aggregation gap.
5. ``eval_downlink(client, t)``: for scoring a client's own model after
   round t (per-client evaluation), what its next downlink would send
   (``peek_downlink``, which changes nothing), counted as ``eval_down``.

FedSA-LoRA's B never leaves its client, so the server cannot restore it:
a client's B is sent once, the shared initial B, on first contact, and
again only after a refusal, when the server assumes nothing about what
the client holds (DESIGN.md, invariant 2). A FedSA-LoRA client whose
update was refused therefore restarts its own B from the shared init.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from federatedscope_rolora.core.accounting import (
    DOWN,
    EVAL_DOWN,
    UP,
    TrafficLedger,
)
from federatedscope_rolora.core.aggregation import client_weights
from federatedscope_rolora.core.merging import GapStats, lora_modules
from federatedscope_rolora.core.methods import (
    MergeInputs,
    Method,
    RoundPlan,
    merge_gap,
)
from federatedscope_rolora.core.residual import VERSION_KEY, ResidualBook
from federatedscope_rolora.core.roles import HEAD, role_of
from federatedscope_rolora.core.validation import (
    InvalidUpdate,
    fingerprint,
    validate_tensors,
)

# A client's copy of a key it trained locally differs from every server
# version, so it is always sent again.
_LOCAL = -1


@dataclass
class ClientUpdate:
    """What a client sends up after local training in one round."""

    client_id: int
    round_idx: int
    tensors: dict[str, torch.Tensor]
    num_examples: int
    frozen_fingerprint: str
    train_loss: float = float("nan")


class RoundFailed(RuntimeError):
    """Fewer than ``rolora.min_received`` updates were accepted in a
    round, or their merge is not finite; the round is not aggregated."""


def require_received(round_idx: int, accepted: int, needed: int,
                     rejected: Mapping[int, str]) -> None:
    """RoundFailed naming every left-out client and why, unless at least
    ``needed`` updates were accepted."""
    if accepted >= needed:
        return
    reasons = "; ".join(f"client {c}: {why}" for c, why in
                        rejected.items())
    raise RoundFailed(f"round {round_idx}: {accepted} client update(s) "
                      f"accepted, fewer than rolora.min_received "
                      f"({needed}); left out: {reasons}")


def _largest_value(update: ClientUpdate) -> float:
    return max((float(t.abs().max()) for t in update.tensors.values()
                if t.numel()), default=0.0)


def client_built_keys(method: Method, state: Mapping[str, torch.Tensor]
                      ) -> frozenset[str]:
    """Keys every client builds itself, bit-identical to the server's:
    the classifier head when the method never trains it. Seeded like
    the rest of the initial adapter and never changed, so it need not
    travel; it is sent only to re-sync a client that was refused."""
    if HEAD in method.plan(1).trained_roles:
        return frozenset()
    return frozenset(k for k in state if role_of(k) == HEAD)


def build_update(client_id: int, plan: RoundPlan,
                 state: Mapping[str, torch.Tensor], num_examples: int,
                 train_loss: float = float("nan")) -> ClientUpdate:
    """Package the uploaded keys of ``state`` (copies) and the fingerprint
    of its frozen keys (FedEx-LoRA's residual totals among them, when
    ``state`` holds them). If local training touched a frozen key, the
    fingerprint no longer matches the server's and the update is refused.
    """
    sent = plan.uploaded_keys(state)
    return ClientUpdate(
        client_id=client_id,
        round_idx=plan.round_idx,
        tensors={k: state[k].detach().clone() for k in sent},
        num_examples=num_examples,
        frozen_fingerprint=fingerprint(state, plan.frozen_keys(state)),
        train_loss=train_loss,
    )


class AdapterServer:
    """Global adapter, per-key versions, per-client sync state, a ledger."""

    def __init__(self, method: Method,
                 initial_state: Mapping[str, torch.Tensor],
                 weighting: str = "examples",
                 ledger: TrafficLedger | None = None,
                 scaling: float = 1.0) -> None:
        """``scaling`` is LoRA's lora_alpha / r: the effective update of a
        module is scaling·B·A (FedEx-LoRA's residual and the gap)."""
        untyped = [k for k in initial_state if role_of(k) is None]
        if untyped:
            raise ValueError(f"initial adapter holds non-adapter tensors, "
                             f"e.g. {untyped[0]!r}")
        if not initial_state:
            raise ValueError("initial adapter is empty")
        client_weights([1], weighting)  # validates the name early
        self.method = method
        self.weighting = weighting
        self.ledger = ledger if ledger is not None else TrafficLedger()
        self.state = {k: v.detach().clone() for k, v in
                      initial_state.items()}
        self.version = dict.fromkeys(self.state, 0)
        self.client_built = client_built_keys(method, self.state)
        self.scaling = float(scaling)
        self.residual: ResidualBook | None = None
        if method.has_residual:
            self.residual = ResidualBook(
                {k: (self.state[m.b_key].shape[0],
                     self.state[m.a_key].shape[1])
                 for k, m in lora_modules(self.state).items()},
                next(iter(self.state.values())).dtype)
        self.last_gap = GapStats(None, None, None)
        self.client_versions: dict[int, dict[str, int]] = {}
        # The round each client was last sent a downlink for: the only
        # round it may upload for, once (a refusal or an accepted update
        # uses it up). Not checkpointed: a checkpoint falls between
        # rounds, and every round starts with its downlinks.
        self._synced: dict[int, int] = {}
        self._pending: dict[int, ClientUpdate] = {}
        self._pending_round: int | None = None
        # A late update of a round already averaged must neither count in
        # nor block a later round.
        self._aggregated_round = 0

    def plan(self, round_idx: int) -> RoundPlan:
        return self.method.plan(round_idx)

    @property
    def aggregated_round(self) -> int:
        """The last round merged (0 before the first)."""
        return self._aggregated_round

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The adapter and, for FedEx-LoRA, the residual totals: what a
        client's frozen keys are compared with."""
        if self.residual is None:
            return self.state
        return {**self.state, **self.residual.total}

    def frozen_fingerprint(self, round_idx: int) -> str:
        plan = self.plan(round_idx)
        frozen = self.frozen_state()
        return fingerprint(frozen, plan.frozen_keys(frozen))

    def downlink(self, client_id: int, round_idx: int
                 ) -> dict[str, torch.Tensor]:
        """Tensors ``client_id`` lacks; recorded in the ledger as sent.
        A key the client trains and keeps (FedSA-LoRA's B) is sent only
        when the client holds none; the residual comes as its book
        says."""
        plan = self.plan(round_idx)
        if client_id not in self.client_versions:
            # First contact: the client built these itself, identical to
            # the server's (its fingerprint checks that), so they stay.
            self.client_versions[client_id] = dict.fromkeys(
                self.client_built, 0)
        held = self.client_versions[client_id]
        payload = self._lacking(held, plan)
        for key in payload.keys() & self.version.keys():
            held[key] = self.version[key]
        # From here on the client may change the keys it trains and
        # sends, whether or not its update ever arrives: next time it
        # gets them afresh.
        for key in plan.uploaded_keys(self.state):
            held[key] = _LOCAL
        if self.residual is not None:
            held[VERSION_KEY] = self.residual.version
        self._synced[client_id] = round_idx
        self.ledger.record(round_idx, client_id, DOWN, payload)
        return payload

    def peek_downlink(self, client_id: int, round_idx: int
                      ) -> dict[str, torch.Tensor]:
        """What ``downlink(client_id, round_idx)`` would send now, with
        nothing marked as held and nothing recorded: the client's copy
        with this applied is the model it would train from (FedSA-LoRA:
        the server's A with its own B), so it is what that client's own
        model is scored as."""
        held = self.client_versions.get(client_id)
        if held is None:
            held = dict.fromkeys(self.client_built, 0)
        return self._lacking(held, self.plan(round_idx))

    def kept_untrusted(self) -> list[int]:
        """Clients the next downlink would send their kept tensors
        (FedSA-LoRA's B) again, having refused them since they last held
        them: the model each of them has is the server's copy of those
        tensors, not the one the client trained."""
        upcoming = self._aggregated_round + 1
        kept = self.plan(upcoming).kept_roles
        return sorted(c for c in self.client_versions if any(
            role_of(k) in kept for k in self.peek_downlink(c, upcoming)))

    def eval_downlink(self, client_id: int, round_idx: int
                      ) -> dict[str, torch.Tensor]:
        """``peek_downlink`` for scoring the client's model after round
        ``round_idx``; recorded in the ledger as that round's
        ``eval_down``, apart from the training downlink, which it leaves
        as it was."""
        payload = self.peek_downlink(client_id, round_idx + 1)
        self.ledger.record(round_idx, client_id, EVAL_DOWN, payload)
        return payload

    def _lacking(self, held: Mapping[str, int], plan: RoundPlan
                 ) -> dict[str, torch.Tensor]:
        """Copies of the adapter keys a client holding ``held`` lacks,
        but the keys it trains and keeps once it has one, and the
        residual its book version lacks."""
        payload = {k: v.clone() for k, v in self.state.items()
                   if held.get(k) != self.version[k]
                   and not (role_of(k) in plan.kept_roles and k in held)}
        if self.residual is not None:
            payload.update(self.residual.payload(held.get(VERSION_KEY)))
        return payload

    def receive(self, update: ClientUpdate) -> None:
        """Validate and keep one update; InvalidUpdate if it is bad.

        A refused update changes nothing in the adapter; it is counted as
        refused traffic and the client is re-synced in full next time
        (``refuse``).
        """
        try:
            self._accept(update)
        except InvalidUpdate:
            self.refuse(update.client_id, self._arrival_round(update),
                        update.tensors)
            raise

    def refuse(self, client_id: int, round_idx: int,
               payload: Mapping[str, Any] | None = None) -> None:
        """Leave ``client_id`` out of ``round_idx``, for any reason
        (invalid, late, raised): what it uploaded is counted as refused
        traffic, and the server assumes nothing about what the client
        holds, so its next downlink re-syncs every key (DESIGN.md,
        invariant 2). A client whose frozen factor drifted is thus
        repaired, never trusted."""
        if isinstance(payload, Mapping) and payload:
            self.ledger.record_refused(round_idx, client_id, payload)
        if client_id in self.client_versions:
            self.client_versions[client_id] = {}
        self._synced.pop(client_id, None)

    def _arrival_round(self, update: ClientUpdate) -> int:
        """The round an update is counted in: its own when that is the
        round its client was synced for and it is not yet aggregated,
        else (a stale, future or malformed round number) the round now
        open."""
        synced = self._synced.get(update.client_id)
        if synced is not None and update.round_idx == synced \
                and synced > self._aggregated_round:
            return synced
        return self._pending_round or self._aggregated_round + 1

    def _accept(self, update: ClientUpdate) -> None:
        who = f"client {update.client_id}, round {update.round_idx}"
        self._check_round(update.round_idx, who)
        if update.client_id in self._pending:
            raise InvalidUpdate(f"{who}: second update in the same round")
        if update.client_id not in self.client_versions:
            raise InvalidUpdate(f"{who}: client was never sent the adapter")
        synced = self._synced.get(update.client_id)
        if synced != update.round_idx:
            # Trained from a copy the server did not send for this round
            # (stale, refused since, or a round not yet open): its frozen
            # half may still match, so the fingerprint alone would let a
            # stale update into the mean (DESIGN.md, invariant 2).
            last = "none since its last update or refusal" \
                if synced is None else f"its last was for round {synced}"
            raise InvalidUpdate(f"{who}: client was not sent this round's "
                                f"downlink ({last})")
        trained = self.plan(update.round_idx).uploaded_keys(self.state)
        validate_tensors(who, update.tensors,
                         {k: self.state[k] for k in trained})
        expected = self.frozen_fingerprint(update.round_idx)
        if update.frozen_fingerprint != expected:
            raise InvalidUpdate(f"{who}: frozen-factor fingerprint "
                                f"{update.frozen_fingerprint[:12]} does not "
                                f"match the server's {expected[:12]}")
        count = update.num_examples
        if isinstance(count, bool) or \
                not isinstance(count, numbers.Integral) or count <= 0:
            raise InvalidUpdate(f"{who}: num_examples must be a positive "
                                f"int, got {count!r}")
        self.ledger.record(update.round_idx, update.client_id, UP,
                           update.tensors)
        del self._synced[update.client_id]
        self._pending[update.client_id] = update
        self._pending_round = update.round_idx

    def received(self) -> list[int]:
        """Client ids whose update for the current round was accepted."""
        return sorted(self._pending)

    def aggregate(self, round_idx: int) -> dict[str, torch.Tensor]:
        """Merge the round's uploads as the method says (sorted by client
        id, so the result does not depend on arrival order), install
        them, add FedEx-LoRA's residual and measure the aggregation gap
        (``last_gap``). Returns the adapter keys that changed."""
        self._check_round(round_idx, f"round {round_idx}")
        if not self._pending:
            raise ValueError(f"round {round_idx}: no client update to "
                             "aggregate")
        updates = [self._pending[c] for c in sorted(self._pending)]
        weights = client_weights([u.num_examples for u in updates],
                                 self.weighting)
        inputs = MergeInputs([u.tensors for u in updates], weights,
                             self.state, self.scaling)
        result = self.method.merge(inputs)
        merged = result.values
        bad = [k for k, v in merged.items() if not torch.isfinite(v).all()]
        try:
            if bad:
                raise ValueError(f"{bad[0]!r} is not finite")
            if self.residual is not None:
                self.residual.add(round_idx, result.residual)
        except ValueError as err:
            # Finite uploads can still overflow in B·A or the SVD; the
            # state (and the last checkpoint) stay as they were.
            loudest = max(updates, key=_largest_value)
            raise RoundFailed(
                f"round {round_idx}: the merge of {len(updates)} accepted "
                f"update(s) is not finite ({err}); client "
                f"{loudest.client_id} sent the largest values (max |x| = "
                f"{_largest_value(loudest):.3g}); nothing was aggregated"
            ) from None
        # A factor kept on the clients (FedSA-LoRA's B) is unknown here,
        # so their effective updates are too: no gap to measure (the
        # server's initial B stood in for theirs; zero for a Linear, but
        # PEFT starts an embedding's B random).
        self.last_gap = GapStats(None, None, None) \
            if self.method.plan(round_idx).kept_roles \
            else merge_gap(inputs, result)
        for key, value in merged.items():
            self.state[key] = value
            self.version[key] = round_idx
        self._pending = {}
        self._pending_round = None
        self._aggregated_round = round_idx
        self._synced = {c: t for c, t in self._synced.items()
                        if t > round_idx}
        return merged

    def state_dict(self) -> dict[str, Any]:
        """What the server must remember to continue after a restart:
        the adapter (copies), each key's version, what each client holds
        and the last averaged round. Taken between rounds only, so no
        update is pending; the ledger is a record of the past, not state.
        """
        if self._pending:
            raise ValueError(f"updates of round {self._pending_round} are "
                             "pending; checkpoint between rounds")
        saved = {
            "state": {k: v.detach().clone() for k, v in self.state.items()},
            "version": dict(self.version),
            "client_versions": {c: dict(held) for c, held in
                                self.client_versions.items()},
            "aggregated_round": self._aggregated_round,
        }
        if self.residual is not None:
            saved["residual"] = self.residual.state_dict()
        return saved

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Install a ``state_dict()``; ValueError naming the culprit if it
        does not fit this adapter (another model, rank or target)."""
        state = saved["state"]
        try:
            validate_tensors("saved server state", state, self.state)
        except InvalidUpdate as err:
            raise ValueError(str(err)) from err
        version = dict(saved["version"])
        last = saved["aggregated_round"]
        if isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise ValueError(f"saved aggregated round must be an int >= 0, "
                             f"got {last!r}")
        if set(version) != set(self.state) or not all(
                _is_version(v, last, local=False) for v in version.values()):
            raise ValueError("saved key versions do not match the adapter's "
                             f"keys or exceed round {last}")
        clients: dict[int, dict[str, int]] = {}
        allowed = set(self.state)
        residual = copy.deepcopy(self.residual)
        if residual is not None:
            allowed.add(VERSION_KEY)
            residual.load_state_dict(saved["residual"])
        for client, held in saved["client_versions"].items():
            if not set(held) <= allowed or not all(
                    _is_version(v, last, local=True)
                    for v in held.values()):
                raise ValueError(f"saved versions of client {client} do not "
                                 "match the adapter")
            clients[int(client)] = dict(held)
        self.state = {k: state[k].detach().clone() for k in self.state}
        self.residual = residual
        self.version = version
        self.client_versions = clients
        self._aggregated_round = last
        self._pending = {}
        self._pending_round = None

    def _check_round(self, round_idx: int, who: str) -> None:
        """Refuse a round that cannot be the current one. It changes
        nothing, so a refused update cannot block the rounds after it."""
        if isinstance(round_idx, bool) or not isinstance(round_idx, int) \
                or round_idx < 1:
            raise InvalidUpdate(f"{who}: rounds are ints numbered from 1, "
                                f"got {round_idx!r}")
        if round_idx <= self._aggregated_round:
            raise InvalidUpdate(f"{who}: round {round_idx} was already "
                                f"aggregated (last: "
                                f"{self._aggregated_round})")
        if self._pending_round not in (None, round_idx):
            raise InvalidUpdate(f"{who}: updates of round "
                                f"{self._pending_round} were never "
                                "aggregated")


def _is_version(value: Any, last: int, local: bool) -> bool:
    """A key version is a round in 0..last, or _LOCAL on a client."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return 0 <= value <= last or (local and value == _LOCAL)
