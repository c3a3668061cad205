"""FedEx-LoRA, FlexLoRA and FedSA-LoRA in the embedded runner: the
residual in the one shared base, FedSA-LoRA's B per client and its
per-client evaluation, the gap in metrics.jsonl, and resume after a real
``kill -9`` bit-identical to the straight run, for each method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.config import build_config
from federatedscope_rolora.core.merging import lora_modules
from federatedscope_rolora.core.names import METHODS
from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.runners.faults import fault_hook
from federatedscope_rolora.runners.outputs import read_metrics
from federatedscope_rolora.runners.setup import build_federation
from federatedscope_rolora.runners.simulation import Simulation, run
from federatedscope_rolora.training.residual import (
    PERSONAL_FILE,
    RESIDUAL_FILE,
    base_weight_name,
)
from tests.conftest import tiny_config_tree
from tests.runners.test_resume import (
    assert_same_run,
    kill_9_in_round_3_then_resume,
    write_cfg_file,
)

NEW = ("fedex_lora", "flexlora", "fedsa_lora")


def make_sim(model: Path, glue: Path, tmp_path: Path, method: str,
             **sections: Any) -> Simulation:
    federate = {"method": method, **sections.pop("federate", {})}
    tree = tiny_config_tree(model, glue, tmp_path / "run",
                            federate=federate, **sections)
    return Simulation(build_federation(build_config(flatten(tree))))


def test_fedex_residual_is_folded_into_the_one_shared_base(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, "fedex_lora")
    params = dict(sim.fed.model.named_parameters())
    book = sim.server.residual
    assert book is not None
    original = {base_weight_name(k): params[base_weight_name(k)]
                .detach().clone() for k in book.total}

    for round_idx in (1, 2):
        sim.run_round(round_idx)

    assert any(float(t.abs().max()) > 0 for t in book.total.values())
    for key, total in book.total.items():
        name = base_weight_name(key)
        assert torch.equal(params[name].detach(), original[name] + total)
    # clients hold their adapters only, never a residual
    for state in sim.clients.values():
        assert set(state) == set(sim.server.state)


def test_fedsa_clients_keep_their_b_and_are_scored_with_it(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, "fedsa_lora")
    initial = {k: v.clone() for k, v in sim.server.state.items()}
    b_keys = [m.b_key for m in lora_modules(sim.server.state).values()]

    sim.run_round(1)
    trained = {c: {k: s[k].clone() for k in b_keys}
               for c, s in sim.clients.items()}
    record = sim.run_round(2)

    for key in b_keys:
        assert torch.equal(sim.server.state[key], initial[key])
        assert not torch.equal(sim.clients[1][key], sim.clients[2][key])
        for client in sim.clients:
            # round 2 started from the client's own round-1 B
            assert not torch.equal(sim.clients[client][key],
                                   trained[client][key])
            assert torch.equal(sim.client_model_state(client)[key],
                               sim.clients[client][key])
    assert record["eval_per_client"]["clients"] == 3
    assert record["eval_per_client"]["examples"] == len(sim.fed.test)
    assert set(record["eval_per_client"]) == {
        "example_weighted", "client_mean", "clients", "examples"}
    assert record["aggregation_gap"] is None


def test_fedsa_saves_each_clients_b_as_it_is_scored(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Client 2's last upload is refused: its model (scored, and what its
    next sync would give it) has the server's initial B again, and that
    is the B saved for it, not the one it trained in the refused round;
    the others' saved B is their own."""
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root,
                            tmp_path / "run",
                            federate={"method": "fedsa_lora",
                                      "total_round_num": 2})
    cfg = build_config(flatten(tree))
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path / "probe",
                   "fedsa_lora")
    b_keys = [m.b_key for m in lora_modules(sim.server.state).values()]
    initial = {k: sim.server.state[k].clone() for k in b_keys}

    run(cfg, update_hook=fault_hook({(2, 2): "nan"}))

    saved = load_file(str(cfg.run_dir / "adapter" / PERSONAL_FILE))
    assert read_metrics(cfg.run_dir)[-1]["rejected"].keys() == {"2"}
    for key in b_keys:
        assert torch.equal(saved[f"2/{key}"], initial[key])
        for client in (1, 3):
            assert not torch.equal(saved[f"{client}/{key}"], initial[key])


def test_per_client_eval_is_off_by_default_but_for_fedsa(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    plain = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, "lora")
    asked = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, "lora",
                     rolora={"per_client_eval": "always", "threads": 1})

    assert "eval_per_client" not in plain.run_round(1)
    record = asked.run_round(1)
    # the global model on every share: its weighted mean is the global
    # score on the whole test set
    assert record["eval_per_client"]["example_weighted"]["acc"] == \
        pytest.approx(record["eval"]["acc"])


def test_fedsa_eval_down_is_what_each_scored_client_lacks(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Two of three clients per round: after round 1 a client that
    trained lacks only the averaged A, the one never drawn the whole
    adapter but the frozen head it builds itself. Per-client evaluation
    changes neither the training traffic nor what is trained."""
    sampled = {"client_num": 3, "sample_client_num": 2,
               "total_round_num": 2}
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, "fedsa_lora",
                   federate=sampled)
    off = make_sim(tiny_model_dir, tiny_glue_root, tmp_path / "off",
                   "fedsa_lora", federate=sampled,
                   rolora={"per_client_eval": "never", "threads": 1})
    state = sim.server.state
    nbytes = {role: sum(t.numel() * t.element_size()
                        for k, t in state.items() if role_of(k) == role)
              for role in ("lora_A", "lora_B")}

    records = [sim.run_round(1), sim.run_round(2)]
    plain = [off.run_round(1), off.run_round(2)]

    seen: set[int] = set()
    for record in records:
        seen |= set(record["clients"])
        strangers = 3 - len(seen)
        want = {"lora_A": 3 * nbytes["lora_A"]}
        if strangers:
            want["lora_B"] = strangers * nbytes["lora_B"]
        assert record["bytes"]["eval_down"] == want
    assert len(records[0]["clients"]) == 2  # one stranger in round 1
    assert any(role_of(k) == "head" for k in state)
    assert [r["bytes"]["eval_down"] for r in plain] == [{}, {}]
    assert "eval_per_client" not in plain[-1]
    for key in ("up", "down"):
        assert [r["bytes"][key] for r in records] == \
            [r["bytes"][key] for r in plain]
    for key, value in off.server.state.items():
        assert torch.equal(sim.server.state[key], value), key
    for client, own in off.clients.items():
        for key, value in own.items():
            assert torch.equal(sim.clients[client][key], value), key


@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_its_gap_and_drift(
        method: str, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path, method,
                   federate={"total_round_num": 1})

    record = sim.run_round(1)

    gap = record["aggregation_gap"]
    if method == "fedsa_lora":
        assert gap is None
    elif method in ("lora", "flexlora"):
        assert gap > 1e-3 and record["client_drift"] > 0
    else:
        assert gap < 1e-6 and record["client_drift"] > 0
    assert set(record) >= {"aggregation_gap", "aggregation_gap_module_max",
                           "client_drift"}


def resumed_federation(method: str) -> dict[str, object]:
    """Two of three clients a round: a client that missed rounds is
    re-synced after the resume as it would have been straight through
    (FedEx-LoRA: from the increments the checkpoint kept)."""
    return {"method": method, "sample_client_num": 2}


@pytest.fixture(scope="module", params=NEW)
def straight(request: pytest.FixtureRequest, tiny_model_dir: Path,
             tiny_glue_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    method = request.param
    tree = tiny_config_tree(tiny_model_dir, tiny_glue_root,
                            tmp_path_factory.mktemp(method) / "run",
                            federate=resumed_federation(method))
    cfg = build_config(flatten(tree))
    run(cfg)
    return method, cfg.run_dir


@pytest.mark.slow
def test_kill_9_mid_round_then_resume_matches_the_straight_run(
        straight: tuple[str, Path], tiny_model_dir: Path,
        tiny_glue_root: Path, tmp_path: Path) -> None:
    method, reference = straight
    run_dir = tmp_path / "run"
    cfg_file = write_cfg_file(tmp_path / "tiny.yaml", tiny_config_tree(
        tiny_model_dir, tiny_glue_root, run_dir,
        federate=resumed_federation(method)))

    done = kill_9_in_round_3_then_resume(cfg_file, run_dir)

    assert done.returncode == 0, done.stderr
    assert_same_run(run_dir, reference)
    extra = {"fedex_lora": RESIDUAL_FILE, "fedsa_lora": PERSONAL_FILE}
    if method in extra:
        got = load_file(str(run_dir / "adapter" / extra[method]))
        want = load_file(str(reference / "adapter" / extra[method]))
        assert set(got) == set(want) and got
        for key, value in want.items():
            assert torch.equal(got[key], value), key
    records = read_metrics(run_dir)
    assert all("aggregation_gap" in r for r in records)
