"""Client faults: a client that raises, is late or sends an invalid update
is left out of its round with a logged reason; the round averages the
rest, or the run stops with its last checkpoint intact."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from federatedscope_rolora.cli import main
from federatedscope_rolora.config import ConfigError, build_config
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.core.accounting import bytes_by_role
from federatedscope_rolora.core.names import METHODS, PERSONAL_METHODS
from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.core.server import ClientUpdate, RoundFailed
from federatedscope_rolora.runners import simulation
from federatedscope_rolora.runners.checkpoint import load_checkpoint
from federatedscope_rolora.runners.faults import (
    FAULTS_ENV,
    WIRE_FAULT_KINDS,
    drift_hook,
    fault_hook,
    parse_faults,
)
from federatedscope_rolora.runners.outputs import read_metrics
from federatedscope_rolora.runners.setup import build_federation
from federatedscope_rolora.runners.simulation import Simulation, run
from federatedscope_rolora.training.models import get_adapter_state
from tests.conftest import tiny_config_tree

# Far above a tiny client's local update (tens of ms), far below the stall.
DEADLINE_S = 2.0
STALL_S = 2.5


def make_tree(model: Path, glue: Path, outdir: Path,
              **sections: Any) -> dict[str, Any]:
    return tiny_config_tree(model, glue, outdir, **sections)


def make_sim(model: Path, glue: Path, outdir: Path,
             faults: dict[tuple[int, int], str],
             **sections: Any) -> Simulation:
    cfg = build_config(flatten(make_tree(model, glue, outdir, **sections)))
    return Simulation(build_federation(cfg), fault_hook(faults),
                      drift_hook(faults))


def sent_updates(sim: Simulation) -> dict[int, ClientUpdate]:
    """Spy on the clients: the updates they sent (after any fault)."""
    sent: dict[int, ClientUpdate] = {}
    hook = sim.update_hook

    def spy(update: ClientUpdate) -> ClientUpdate:
        out = hook(update) if hook is not None else update
        sent[update.client_id] = out
        return out

    sim.update_hook = spy
    return sent


def accepted_updates(sim: Simulation) -> dict[int, ClientUpdate]:
    """Spy on the server: the updates it accepted, by client."""
    kept: dict[int, ClientUpdate] = {}
    receive = sim.server.receive

    def spy(update: ClientUpdate) -> None:
        receive(update)
        kept[update.client_id] = update

    sim.server.receive = spy  # type: ignore[method-assign]
    return kept


def weighted_mean(states: list[dict[str, torch.Tensor]],
                  counts: list[int]) -> dict[str, torch.Tensor]:
    """sum(n_i x_i) / sum(n_i), written out independently of the core."""
    total = sum(counts)
    return {key: (torch.stack([n * s[key].double() for s, n in
                               zip(states, counts, strict=True)]).sum(0)
                  / total).float()
            for key in states[0]}


@pytest.mark.parametrize(("kind", "reason"), [pytest.param(*case, id=case[0])
                                             for case in [
    ("raise", "raised RuntimeError: injected fault in client 2, round 1"),
    ("hang", "late: took"),
    ("nan", "holds NaN or Inf values"),
    ("shape", "has shape"),
    ("dtype", "has dtype torch.float64"),
    ("keys", "wrong key set"),
    ("fingerprint", "frozen-factor fingerprint 000000000000"),
]])
def test_faulty_client_is_left_out_and_the_rest_averaged(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, kind: str, reason: str) -> None:
    fault = f"hang={STALL_S}" if kind == "hang" else kind
    deadline = DEADLINE_S if kind == "hang" else 0.0
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   {(1, 2): fault},
                   rolora={"client_deadline_s": deadline})
    accepted = accepted_updates(sim)
    spoilt = sent_updates(sim)
    rows = sim.fed.client_indices

    with caplog.at_level(logging.WARNING, "federatedscope_rolora"):
        record = sim.run_round(1)

    assert record["clients"] == [1, 3]
    assert list(record["rejected"]) == [2]
    assert reason in record["rejected"][2]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [f"round 1: client 2 left out: "
                      f"{record['rejected'][2]}"]
    assert sorted(accepted) == [1, 3]
    trained = list(accepted[1].tensors)
    assert {role_of(k) for k in trained} == {"lora_B"}
    expected = weighted_mean([accepted[1].tensors, accepted[3].tensors],
                             [len(rows[1]), len(rows[3])])
    with_faulty = weighted_mean(
        [sim.clients[c] for c in (1, 2, 3)],
        [len(rows[c]) for c in (1, 2, 3)])
    for key in trained:
        assert torch.allclose(sim.server.state[key], expected[key],
                              rtol=1e-6, atol=1e-7), key
    assert any(not torch.allclose(sim.server.state[k], with_faulty[k])
               for k in trained)
    # Bytes are traffic: the refused upload counts in "up" and apart.
    per_client = sum(t.numel() * 4 for t in accepted[1].tensors.values())
    refused = {} if kind == "raise" else bytes_by_role(spoilt[2].tensors)
    assert (kind == "raise") == (not refused)
    assert record["bytes"]["up_rejected"] == refused
    assert record["bytes"]["up"] == {
        "lora_B": 2 * per_client + refused.get("lora_B", 0)}


@pytest.mark.parametrize("kind", ["raise", "nan", "fingerprint"])
def test_an_excluded_client_is_resynced_and_accepted_next_round(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        kind: str) -> None:
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   {(1, 2): kind})
    sent: dict[int, set[str]] = {}
    downlink = sim.server.downlink

    def spy(client_id: int, round_idx: int) -> dict[str, torch.Tensor]:
        payload = downlink(client_id, round_idx)
        sent[client_id] = set(payload)
        return payload

    sim.server.downlink = spy  # type: ignore[method-assign]
    first = sim.run_round(1)
    server_b = {k: v.clone() for k, v in sim.server.state.items()
                if role_of(k) == "lora_B"}

    second = sim.run_round(2)

    assert first["rejected"].keys() == {2}
    assert second["phase"] == "A" and second["rejected"] == {}
    assert second["clients"] == [1, 2, 3]
    # Client 2 was re-synced in full, and trained A on exactly the
    # averaged B.
    assert sent[2] == set(sim.server.state)
    for key, value in server_b.items():
        assert torch.equal(sim.clients[2][key], value), key


@pytest.mark.parametrize("method", METHODS)
def test_a_client_whose_frozen_half_drifted_is_resynced_not_trusted(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Client 2's local training of round 3 really changes a tensor
    frozen in that round (A where the method freezes it, else the head),
    as a buggy optimizer would: refused for its fingerprint, then
    re-synced in full, accepted in round 4, and at the start of every
    local training of round 4 the whole adapter is bit-identical to the
    server's (invariant 2). Before the fix, FFA-LoRA and LoRA refused
    that client forever (A, or the head, is never re-sent) and RoLoRA
    accepted A trained from the drifted copy."""
    sim = make_sim(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                   {(3, 2): "drift"}, federate={"method": method})
    calls: list[dict[str, torch.Tensor]] = []
    real_train = simulation.local_train

    def spy(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        calls.append(get_adapter_state(model))
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(simulation, "local_train", spy)
    for round_idx in (1, 2):
        sim.run_round(round_idx)
    third = sim.run_round(3)
    server_before = {k: v.clone() for k, v in sim.server.state.items()}
    fourth = sim.run_round(4)

    assert list(third["rejected"]) == [2]
    assert "frozen-factor fingerprint" in third["rejected"][2]
    assert third["bytes"]["up_rejected"]
    assert fourth["rejected"] == {} and fourth["clients"] == [1, 2, 3]
    assert len(calls) == 12
    # FedSA-LoRA's clients 1 and 3 train their own B; client 2, re-synced
    # in full, starts from the server's copy of every tensor.
    own = {"lora_B"} if method in PERSONAL_METHODS else set()
    for client, state in zip((1, 2, 3), calls[9:], strict=True):
        assert set(state) == set(server_before)
        for k, v in server_before.items():
            if client != 2 and role_of(k) in own:
                continue
            assert torch.equal(state[k], v), (client, k)


def write_cfg(tmp_path: Path, model: Path, glue: Path,
              **sections: Any) -> Path:
    path = tmp_path / "tiny.yaml"
    tree = make_tree(model, glue, tmp_path / "run", **sections)
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def test_too_few_updates_stop_the_run_and_resume_finishes_it(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    tree = make_tree(tiny_model_dir, tiny_glue_root, tmp_path / "run",
                     rolora={"min_received": 3})
    cfg = build_config(flatten(tree))
    straight = cfg.replace(outdir=str(tmp_path / "straight"))
    run(straight)
    hook = fault_hook({(2, 2): "keys"})

    with pytest.raises(RoundFailed, match=r"round 2: 2 client update\(s\) "
                       r"accepted, fewer than rolora.min_received \(3\); "
                       r"left out: client 2: invalid update"):
        run(cfg, update_hook=hook)
    saved = load_checkpoint(cfg.run_dir)
    assert saved is not None and saved.round_idx == 1
    assert [r["round"] for r in read_metrics(cfg.run_dir)] == [1]
    assert not (cfg.run_dir / "adapter").exists()

    run(cfg, resume=True)

    got = load_file(str(cfg.run_dir / "adapter" /
                        "adapter_model.safetensors"))
    want = load_file(str(straight.run_dir / "adapter" /
                         "adapter_model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert [r["clients"] for r in read_metrics(cfg.run_dir)] == \
        [[1, 2, 3]] * 4


def test_cli_exits_3_with_one_line_and_resumes_after_the_cause_is_fixed(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    cfg_file = write_cfg(tmp_path, tiny_model_dir, tiny_glue_root)
    run_dir = tmp_path / "run"
    monkeypatch.setenv(FAULTS_ENV, "2:1:raise,2:2:nan,2:3:dtype")

    with caplog.at_level(logging.WARNING, "federatedscope_rolora"):
        code = main(["run", "--cfg", str(cfg_file)])

    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("federatedscope-rolora: error: round 2: 0 "
                             "client update(s) accepted")
    assert f"--resume {run_dir}" in err[0]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == \
        ["round 2"] * 3
    assert load_checkpoint(run_dir).round_idx == 1  # type: ignore

    monkeypatch.setenv(FAULTS_ENV, "3:2:nan")
    assert main(["run", "--cfg", str(cfg_file), "--resume"]) == 0

    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert records[2]["clients"] == [1, 3]
    assert "holds NaN or Inf" in records[2]["rejected"]["2"]


def test_fault_spec_parses_and_names_a_bad_entry() -> None:
    assert parse_faults(" 3:2:raise, 4:1:hang=2.5 ,") == {
        (3, 2): "raise", (4, 1): "hang=2.5"}
    assert parse_faults("") == {}
    for bad in ("3:2", "x:2:nan", "3:2:melt", "3:2:nan=1", "3:2:hang=-1",
                "3:2:hang=inf", "3:2:hang=1e400", "3:2:hang=nan"):
        with pytest.raises(ConfigError, match=f"{FAULTS_ENV}: bad entry"):
            parse_faults(bad)
    # entries that could never fire, or a second one for the same client
    # and round (the last used to win without a word)
    for never in ("0:1:raise", "3:0:raise", "-1:2:nan"):
        with pytest.raises(ConfigError, match="never fires"):
            parse_faults(never, clients=3)
    with pytest.raises(ConfigError, match=r"never fires: rounds count "
                       r"from 1, clients are 1\.\.3"):
        parse_faults("3:99:raise", clients=3)
    with pytest.raises(ConfigError, match="client 2 already has a fault "
                       "in round 3"):
        parse_faults("3:2:raise,3:2:nan")


def test_wire_faults_are_the_plugins_alone() -> None:
    """The embedded runner has no messages to spoil: its CLI refuses the
    plugin client's wire faults, which that client reads."""
    wire = ("drift", *WIRE_FAULT_KINDS)
    assert parse_faults("2:1:twice,3:1:early,4:2:spoof=3", kinds=wire) == {
        (2, 1): "twice", (3, 1): "early", (4, 2): "spoof=3"}
    for bad in ("2:1:twice", "4:2:spoof=3"):
        with pytest.raises(ConfigError, match=r"KIND one of raise, .*drift "
                           r"\(hang=SECONDS\)$"):
            parse_faults(bad)
    for bad in ("4:2:spoof", "4:2:spoof=0", "4:2:spoof=x", "2:1:twice=1",
                "2:1:raise"):
        with pytest.raises(ConfigError, match=r"KIND one of drift, twice, "
                           r"early, spoof \(spoof=CLIENT\)$"):
            parse_faults(bad, kinds=wire)
