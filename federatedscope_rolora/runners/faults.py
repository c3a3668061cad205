"""Test-only fault injection: make chosen clients fail in chosen rounds,
as a faulty or malicious client would.

The CLI reads the faults from ``ROLORA_TEST_FAULTS`` for its own tests; it
is not a user setting and is documented as such.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import torch

from federatedscope_rolora.config import ConfigError
from federatedscope_rolora.core.methods import RoundPlan
from federatedscope_rolora.core.roles import LORA_A, role_of
from federatedscope_rolora.core.server import ClientUpdate
from federatedscope_rolora.runners.simulation import StateHook, UpdateHook

FAULTS_ENV = "ROLORA_TEST_FAULTS"
# "drift": local training really changes a tensor frozen in that round,
# as a buggy optimizer would; the client keeps the drifted copy.
FAULT_KINDS = ("raise", "hang", "nan", "shape", "dtype", "keys",
               "fingerprint", "drift")
# How the FederatedScope plugin's client sends its upload (the embedded
# runner hands updates over without messages, so its CLI refuses these):
# "twice" sends it twice, "early" stamps it for the next round,
# "spoof=K" sends it again as from client K.
WIRE_FAULT_KINDS = ("twice", "early", "spoof")
DRIFT = 1e-3
Faults = Mapping[tuple[int, int], str]


def parse_faults(text: str, clients: int | None = None,
                 kinds: tuple[str, ...] = FAULT_KINDS
                 ) -> dict[tuple[int, int], str]:
    """``"3:2:raise,4:1:hang=2.5"``: client 2 raises in round 3, client 1
    stalls 2.5 s in round 4. ConfigError naming the bad entry: a kind
    not in ``kinds``, one that could never fire (round or client under
    1, a client past ``clients``), a second entry for one round and
    client, a hang that is not a finite number of seconds, a spoof
    without a client number."""
    faults: dict[tuple[int, int], str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        parts = entry.split(":")
        kind = parts[-1].partition("=")
        try:
            round_idx, client = int(parts[0]), int(parts[1])
            ok = len(parts) == 3 and kind[0] in kinds and (
                (kind[0] == "spoof" and int(kind[2]) >= 1)
                or (kind[0] != "spoof" and not kind[2])
                or (kind[0] == "hang" and 0 <= float(kind[2]) < math.inf))
        except (ValueError, IndexError):
            ok = False
        if not ok:
            forms = ", ".join(f for f in ("hang=SECONDS", "spoof=CLIENT")
                              if f.partition("=")[0] in kinds)
            raise ConfigError(f"{FAULTS_ENV}: bad entry {entry!r}; expected "
                              "ROUND:CLIENT:KIND with KIND one of "
                              f"{', '.join(kinds)} ({forms})")
        top = "" if clients is None else f"..{clients}"
        if round_idx < 1 or client < 1 or (clients is not None
                                           and client > clients):
            raise ConfigError(f"{FAULTS_ENV}: entry {entry!r} never fires: "
                              f"rounds count from 1, clients are 1{top}")
        if (round_idx, client) in faults:
            raise ConfigError(f"{FAULTS_ENV}: entry {entry!r}: client "
                              f"{client} already has a fault in round "
                              f"{round_idx}")
        faults[(round_idx, client)] = parts[2]
    return faults


def fault_hook(faults: Faults, hang_s: float = 1.0) -> UpdateHook:
    """An update hook that applies ``faults[(round, client)]``."""
    def hook(update: ClientUpdate) -> ClientUpdate:
        kind = faults.get((update.round_idx, update.client_id))
        return update if kind is None else inject_fault(update, kind,
                                                        hang_s)
    return hook


def drift_hook(faults: Faults) -> StateHook:
    """A state hook that applies the ``drift`` entries of ``faults`` to a
    client's adapter after its local training, before it is packaged."""
    def hook(plan: RoundPlan, client_id: int,
             state: dict[str, torch.Tensor]) -> None:
        if faults.get((plan.round_idx, client_id)) == "drift":
            drift_frozen(plan, state)
    return hook


def drift_frozen(plan: RoundPlan, state: dict[str, torch.Tensor]) -> str:
    """Shift one tensor frozen in ``plan`` (lora_A where the method
    freezes it, else the first frozen one) by DRIFT, in place; its key."""
    frozen = sorted(plan.frozen_keys(state))
    if not frozen:
        raise ValueError(f"round {plan.round_idx} freezes no tensor")
    key = next((k for k in frozen if role_of(k) == LORA_A), frozen[0])
    state[key] = state[key] + DRIFT
    return key


def inject_fault(update: ClientUpdate, kind: str, hang_s: float = 1.0
                 ) -> ClientUpdate:
    """``update`` spoilt as ``kind`` says (a copy), or a raise or stall;
    ``drift`` acts on the client's state instead (``drift_hook``)."""
    name, _, arg = kind.partition("=")
    if name == "drift":
        return update
    if name == "raise":
        raise RuntimeError(f"injected fault in client {update.client_id}, "
                           f"round {update.round_idx}")
    if name == "hang":
        time.sleep(float(arg) if arg else hang_s)
        return update
    if name == "fingerprint":
        return dataclasses.replace(update, frozen_fingerprint="0" * 64)
    tensors = dict(update.tensors)
    key = sorted(tensors)[0]
    value = tensors[key].clone()
    if name == "nan":
        value.view(-1)[0] = float("nan")
        tensors[key] = value
    elif name == "shape":
        tensors[key] = value.unsqueeze(-1)
    elif name == "dtype":
        tensors[key] = value.double()
    elif name == "keys":
        del tensors[key]
    else:
        raise ValueError(f"unknown fault {kind!r}; known: "
                         f"{', '.join(FAULT_KINDS)}")
    return dataclasses.replace(update, tensors=tensors)
