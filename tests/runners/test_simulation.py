"""The embedded runner in-process: one base model, same init, re-sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.config import build_config
from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.runners.setup import build_federation
from federatedscope_rolora.runners.simulation import Simulation
from federatedscope_rolora.training.models import get_adapter_state
from tests.conftest import tiny_config_tree


def make_sim(tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
             **sections: Any) -> Simulation:
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root,
                            tmp_path / "run", **sections)
    return Simulation(build_federation(build_config(flatten(tree))))


def test_clients_hold_only_adapter_tensors_of_one_shared_model(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path,
                   federate={"client_num": 6, "total_round_num": 2})
    adapter_keys = set(get_adapter_state(sim.fed.model))

    for round_idx in (1, 2):
        sim.run_round(round_idx)

    assert set(sim.clients) == set(range(1, 7))
    for state in sim.clients.values():
        assert set(state) == adapter_keys
        assert all(role_of(k) is not None for k in state)
    base_params = sum(p.numel() for p in sim.fed.model.parameters())
    client_params = sum(t.numel() for s in sim.clients.values()
                        for t in s.values())
    # Six clients together hold far less than one base model.
    assert client_params < base_params


def test_every_client_starts_from_the_servers_initial_adapter(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path)
    initial = {k: v.clone() for k, v in sim.server.state.items()}
    sent: dict[int, dict[str, torch.Tensor]] = {}
    downlink = sim.server.downlink

    def spy(client_id: int, round_idx: int) -> dict[str, torch.Tensor]:
        payload = downlink(client_id, round_idx)
        sent[client_id] = payload
        return payload

    sim.server.downlink = spy  # type: ignore[method-assign]
    sim.run_round(1)

    assert sorted(sent) == [1, 2, 3]
    for client, payload in sent.items():
        # the frozen head is built by the client itself, not sent
        assert set(payload) == {k for k in initial if "classifier" not in k}
        held = sim.clients[client]
        assert set(held) == set(initial)
        assert all(torch.equal(held[k], initial[k]) for k in initial
                   if k not in payload)
        assert all(torch.equal(payload[k], initial[k]) for k in payload)


def test_sampled_clients_are_resynced_after_missing_rounds(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path,
                   federate={"client_num": 6, "total_round_num": 8,
                             "sample_client_rate": 0.34})
    seen: dict[int, int] = {}
    returning = []

    for round_idx in range(1, 9):
        record = sim.run_round(round_idx)
        for client in record["clients"]:
            last = seen.get(client)
            if last is not None and round_idx - last > 2:
                returning.append((client, round_idx))
            seen[client] = round_idx
        # Every update passed the frozen-factor fingerprint check.
        assert record["rejected"] == {}
        assert len(record["clients"]) == 2

    assert returning, "the seed should make some client skip rounds"
    frozen_b = {k: v for k, v in sim.server.state.items()
                if role_of(k) == "lora_B"}
    # Round 8 trained A, so every client that took part holds B exactly
    # as the server does.
    for client in sim.participants(8):
        for key, value in frozen_b.items():
            assert torch.equal(sim.clients[client][key], value)


def test_a_b_round_leaves_every_a_tensor_bit_identical(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path)
    before = {k: v.clone() for k, v in sim.server.state.items()}

    record = sim.run_round(1)

    assert record["phase"] == "B"
    changed = {k for k in before
               if not torch.equal(before[k], sim.server.state[k])}
    assert changed, "round 1 should change lora_B"
    assert {role_of(k) for k in changed} == {"lora_B"}


@pytest.mark.parametrize("method", ["lora", "ffa_lora"])
def test_baselines_change_only_their_trained_roles(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        method: str) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path,
                   federate={"method": method})
    before = {k: v.clone() for k, v in sim.server.state.items()}

    sim.run_round(1)
    sim.run_round(2)

    changed = {role_of(k) for k in before
               if not torch.equal(before[k], sim.server.state[k])}
    expected = {"lora_A", "lora_B"} if method == "lora" else {"lora_B"}
    assert changed == expected
