"""FederatedScope's own ``main.py`` runs the six methods on a tiny BERT
through the installed plugin, and does what the embedded runner
does: the same keys travel, the same bytes, the same participants.

Every run is a real ``federatedscope/main.py`` process in a venv where
this package was pip-installed (``conftest.installed_venv``), so the
plugin is found by its ``.pth`` hook and nothing else. Skipped when
FederatedScope is not installed.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import rescale_a_weight, write_own_data
from tests.fs.conftest import (
    TIMEOUT_S,
    FsMain,
    FsRun,
    clean_env,
    embedded_records,
    fs_tree,
    read_jsonl,
    write_config,
)

pytestmark = [pytest.mark.fs, pytest.mark.slow]


def roles_sent_up(records: list[dict[str, Any]]) -> list[set[str]]:
    return [set(r["bytes"]["up"]) for r in records]


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``text`` appears in ``log``; AssertionError if ``proc`` ends
    or TIMEOUT_S passes first."""
    deadline = time.monotonic() + TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.2)


def eval_log(run: FsRun) -> list[dict[str, Any]]:
    """FederatedScope's own ``eval_results.log`` (one dict per line)."""
    text = (run.run_dir / "eval_results.log").read_text(encoding="utf-8")
    return [ast.literal_eval(line) for line in text.splitlines() if line]


@pytest.fixture(scope="module")
def rolora(fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
           tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[FsRun, list[dict[str, Any]]]:
    """RoLoRA, 3 clients sharing the server's one model, 3 rounds; and the
    embedded runner on the same file."""
    tmp = tmp_path_factory.mktemp("fs_rolora")
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp / "fs",
                   federate={"total_round_num": 3,
                             "share_local_model": True})
    cfg = write_config(tmp / "rolora.yaml", tree)
    return fs_main.run(cfg), embedded_records(cfg, tmp / "embedded")


def test_rolora_uploads_b_then_a_then_b(
        rolora: tuple[FsRun, list[dict[str, Any]]]) -> None:
    run, _ = rolora

    records = read_jsonl(run.run_dir / "metrics.jsonl")

    assert [r["phase"] for r in records] == ["B", "A", "B"]
    assert roles_sent_up(records) == [{"lora_B"}, {"lora_A"}, {"lora_B"}]


def test_rolora_bytes_equal_the_embedded_runners(
        rolora: tuple[FsRun, list[dict[str, Any]]]) -> None:
    run, embedded = rolora

    records = read_jsonl(run.run_dir / "metrics.jsonl")

    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    # and they are FederatedScope's log's too, not only our file's
    assert f"bytes up {records[1]['bytes']['up']}" in \
        (run.run_dir / "exp_print.log").read_text(encoding="utf-8")


def test_accuracy_is_reported_every_round(
        rolora: tuple[FsRun, list[dict[str, Any]]]) -> None:
    run, _ = rolora

    server = [e for e in eval_log(run) if e["Role"] == "Server #"
              and e["Round"] != "Final"]
    records = read_jsonl(run.run_dir / "metrics.jsonl")

    assert [e["Round"] for e in server] == [1, 2, 3]
    assert all(0 <= e["Results_raw"]["test_acc"] <= 1 for e in server)
    assert [r["eval"]["acc"] for r in records] == \
        [e["Results_raw"]["test_acc"] for e in server]


def test_the_saved_adapter_loads_with_peft(
        rolora: tuple[FsRun, list[dict[str, Any]]],
        tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run, _ = rolora
    base = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=2)

    model = PeftModel.from_pretrained(base, str(run.run_dir / "adapter"))

    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b
    # PEFT starts B at zero; rounds 1 and 3 trained it
    assert all(bool(torch.count_nonzero(p) > 0) for p in lora_b)


def test_eval_rebuilds_the_plugins_model_and_score(
        rolora: tuple[FsRun, list[dict[str, Any]]], tmp_path: Path) -> None:
    """``federatedscope-rolora eval`` on a plugin run, with the YAML it
    ran: the global adapter scores what the server recorded; per-client
    shares are FederatedScope's, so they are refused, not guessed."""
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.trained import TrainedError, score_run

    run, _ = rolora
    cfg = load_config(run.run_dir.parent.parent / "rolora.yaml")
    summary = json.loads((run.run_dir / "summary.json").read_text(
        encoding="utf-8"))

    scored = score_run(run.run_dir, cfg)

    assert scored["eval"]["acc"] == summary["final"]["acc"]
    assert scored["eval"]["loss"] == pytest.approx(summary["final"]["loss"],
                                                   rel=1e-5)
    # The server recorded the digest of the rows eval rebuilds.
    assert set(summary["data_digest"]) == {"test"}
    assert scored["same_rows"] is True
    with pytest.raises(TrainedError, match="FederatedScope's splitter"):
        score_run(run.run_dir, cfg, per_client=True)


def test_export_writes_the_plugins_model_as_a_plain_checkpoint(
        rolora: tuple[FsRun, list[dict[str, Any]]], tmp_path: Path) -> None:
    """``federatedscope-rolora export`` on a plugin run: transformers
    alone loads the merged model, and it matches the run's."""
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.trained import export_model

    run, _ = rolora
    cfg = load_config(run.run_dir.parent.parent / "rolora.yaml")

    record = export_model(run.run_dir, cfg, tmp_path / "out")

    assert record["check"]["max_abs_logit_diff"] < 1e-4
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_eval_and_export_read_the_plugin_runs_own_config(
        rolora: tuple[FsRun, list[dict[str, Any]]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The run writes its config in this package's schema
    (``rolora_config.yaml``) beside FederatedScope's full dump, which the
    embedded loader refuses: ``eval`` and ``export`` needed ``--cfg``,
    and ``eval`` could not say when an override scored under other
    values than the run's."""
    from federatedscope_rolora.cli import main

    run, _ = rolora
    summary = json.loads((run.run_dir / "summary.json").read_text(
        encoding="utf-8"))

    assert main(["eval", "--json", str(run.run_dir)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["eval"]["acc"] == summary["final"]["acc"]
    assert "other values" not in out.err
    assert main(["eval", str(run.run_dir), "llm.tok_len", "12"]) == 0
    assert "llm.tok_len (16 in the run, 12 here)" in capsys.readouterr().err
    assert main(["export", str(run.run_dir), str(tmp_path / "out")]) == 0
    assert "match the run's model" in capsys.readouterr().out


@pytest.mark.parametrize("method, shared, trained, fallback", [
    ("lora", False, {"lora_A", "lora_B"}, True),
    ("ffa_lora", True, {"lora_B"}, False),
])
def test_lora_and_ffa_lora_send_what_they_train(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, method: str, shared: bool, trained: set[str],
        fallback: bool) -> None:
    """LoRA runs through the ``fs-main`` fallback with the ``.pth`` hook
    off, FFA-LoRA through the hook."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": method, "total_round_num": 2,
                             "share_local_model": shared})
    cfg = write_config(tmp_path / f"{method}.yaml", tree)

    run = fs_main.run(cfg, fallback=fallback)
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert roles_sent_up(records) == [trained, trained]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]


@pytest.mark.parametrize("method, shared, sent", [
    ("fedex_lora", True, {"lora_A", "lora_B"}),
    ("fedex_lora", False, {"lora_A", "lora_B"}),
    ("flexlora", False, {"lora_A", "lora_B"}),
    ("fedsa_lora", True, {"lora_A"}),
    ("fedsa_lora", False, {"lora_A"}),
])
def test_new_methods_move_the_embedded_runners_bytes(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, method: str, shared: bool, sent: set[str]) -> None:
    """Issue 10: FedEx-LoRA (with its residual), FlexLoRA and FedSA-LoRA
    as ``federate.method`` values, with one shared model or a model per
    client: the bytes of every round, by role and direction, are the
    embedded runner's; half the clients per round, so a client that
    missed rounds is re-synced (FedEx-LoRA: with the increments it missed,
    or the whole residual) and
    its fingerprint, which covers the residual, still matches."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": method, "client_num": 4,
                             "sample_client_num": 2, "total_round_num": 3,
                             "share_local_model": shared})
    cfg = write_config(tmp_path / f"{method}.yaml", tree)

    records = read_jsonl(fs_main.run(cfg).run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert all(r["rejected"] == {} for r in records)
    assert roles_sent_up(records) == [sent] * 3
    assert [r["clients"] for r in records] == \
        [r["clients"] for r in embedded]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    gaps = [r["aggregation_gap"] for r in records]
    if method == "fedex_lora":
        assert all(g < 1e-6 for g in gaps)
        assert sum(r["bytes"]["down"].get("residual", 0)
                   for r in records) > 0
    elif method == "flexlora":
        assert all(g > 0 for g in gaps)
    else:
        assert gaps == [None] * 3


def test_sampled_clients_with_their_own_models_stay_in_sync(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """Half of 4 clients per round, each with its own model: a client
    that missed rounds is re-synced with everything it lacks. The server
    checks the fingerprint of every update's frozen factor against its
    own, so no client left out means every frozen half was bit-identical
    to the server's."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"client_num": 4, "sample_client_rate": 0.5,
                             "total_round_num": 4,
                             "share_local_model": False})
    cfg = write_config(tmp_path / "sampled.yaml", tree)

    records = read_jsonl(fs_main.run(cfg).run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert [len(r["clients"]) for r in records] == [2, 2, 2, 2]
    assert [r["clients"] for r in records] == \
        [r["clients"] for r in embedded]
    assert all(r["rejected"] == {} for r in records)
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    assert roles_sent_up(records) == [{"lora_B"}, {"lora_A"}] * 2


def run_distributed(fs_main: FsMain, tiny_model_dir: Path,
                    tiny_glue_root: Path, tmp_path: Path,
                    free_ports: list[int], rounds: dict[str, Any],
                    env: dict[str, str] | None = None,
                    own: dict[int, dict[str, Any]] | None = None
                    ) -> tuple[list[int], dict[str, str]]:
    """A server and two clients, three processes talking gRPC on
    127.0.0.1; their exit codes and the tails of their logs. ``own``:
    config sections of one process's YAML, by its index (0 the
    server)."""
    procs = []
    try:
        for index, port in enumerate(free_ports):
            role = "server" if index == 0 else "client"
            sections = dict((own or {}).get(index, {}))
            tree = fs_tree(
                tiny_model_dir, tiny_glue_root, tmp_path / "dist",
                expname=f"{role}{index}",
                federate={**rounds, "mode": "distributed"},
                distribute={"use": True, "role": role, "data_idx": index,
                            "server_host": "127.0.0.1",
                            "server_port": free_ports[0],
                            "client_host": "127.0.0.1",
                            "client_port": port,
                            **sections.pop("distribute", {})},
                **sections)
            cfg = write_config(tmp_path / f"{role}{index}.yaml", tree)
            log = tmp_path / f"{role}{index}.log"
            procs.append(fs_main.start(cfg, log=log, env=env))
            if role == "server":  # a client that finds no server gives up
                wait_for(log, "Server: Listen to", procs[0])
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    logs = {f.name: f.read_text(errors="replace")[-3000:]
            for f in tmp_path.glob("*.log")}
    return codes, logs


DISTRIBUTED_SENT = {"rolora": [{"lora_B"}, {"lora_A"}],
                    "fedex_lora": [{"lora_A", "lora_B"}] * 2,
                    "fedsa_lora": [{"lora_A"}] * 2}


@pytest.mark.parametrize("method", list(DISTRIBUTED_SENT))
def test_distributed_mode_on_loopback(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int], method: str) -> None:
    """Each process builds the data and its partition itself.
    FedEx-LoRA's residual and FedSA-LoRA's kept B go through the real
    wire."""
    rounds = {"client_num": 2, "total_round_num": 2, "method": method}
    standalone = write_config(tmp_path / "standalone.yaml", fs_tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "st", federate=rounds))

    codes, logs = run_distributed(fs_main, tiny_model_dir, tiny_glue_root,
                                  tmp_path, free_ports, rounds)

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    embedded = embedded_records(standalone, tmp_path / "embedded")
    assert roles_sent_up(records) == DISTRIBUTED_SENT[method]
    assert [r["clients"] for r in records] == [[1, 2], [1, 2]]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    assert all("finished after round 2" in logs[f"client{i}.log"]
               for i in (1, 2))
    personal = ["eval_per_client" in r for r in records]
    if method != "fedsa_lora":
        assert personal == [False, False]
        return
    # each client scored its own model (server's A, its own B) over gRPC
    assert personal == [True, True]
    own: dict[int, dict[int, Any]] = {}
    for i in (1, 2):
        text = (tmp_path / "dist" / f"client{i}" / "exp_print.log"
                ).read_text(encoding="utf-8")
        for round_idx, scores in own_model_scores(text).items():
            own.setdefault(round_idx, {}).update(scores)
    for record in records:
        assert_merged_from_clients(record, own[record["round"]])
        assert record["eval_per_client"]["examples"] == \
            embedded[0]["eval_per_client"]["examples"]
    assert_scores_are_the_clients_own_models(
        fs_main, standalone, records[-1],
        tmp_path / "dist" / "server0" / "adapter",
        [f"{tmp_path / 'dist' / f'client{i}' / 'adapter'}@{i}"
         for i in (1, 2)])


def test_a_distributed_client_under_another_config_is_left_out(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int]) -> None:
    """Each process reads its own YAML: the second client's learning rate
    of 0.5 trained into the run without a word. Its updates are now
    refused, naming the key, every round; the run goes on with the
    other client (rolora.min_received 1)."""
    rounds = {"client_num": 2, "total_round_num": 2}
    fast = {"train": {"local_update_steps": 4,
                      "optimizer": {"type": "AdamW", "lr": 0.5}}}

    # what only the server reads, or only where a process runs, may
    # differ: the other client's updates are accepted
    server_only = {"rolora": {"client_deadline_s": 1000.0,
                              "min_received": 1}}
    elsewhere = {"rolora": {"eval_batch_size": 8},
                 "dataloader": {"num_workers": 0}}

    # the model's path on each machine may differ, its weights may not:
    # the first client loads a copy, the second a rescaled one (it was
    # accepted, told apart from the server's by the path alone)
    copy, rescaled = tmp_path / "copy", tmp_path / "rescaled"
    shutil.copytree(tiny_model_dir, copy)
    shutil.copytree(tiny_model_dir, rescaled)
    rescale_a_weight(rescaled)
    elsewhere["model"] = {"type": str(copy)}
    fast["model"] = {"type": str(rescaled)}

    codes, logs = run_distributed(fs_main, tiny_model_dir, tiny_glue_root,
                                  tmp_path, free_ports, rounds,
                                  own={0: server_only, 1: elsewhere,
                                       2: fast})

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    # IDs go by join order: the client left out is the one that joined
    # with lr 0.5, whichever ID it got
    left_out = {c for record in records for c in record["rejected"]}
    assert len(left_out) == 1, records
    client = int(left_out.pop())
    for record in records:
        refused = record["rejected"][str(client)]
        assert "ran under another config than the server's: model " \
            "weights (base_digest) (" in refused
        assert "train.optimizer.lr (0.01 for the run, 0.5 here)" in refused
        assert record["clients"] == [3 - client]
        # the refused upload crossed the wire all the same: as many
        # bytes as the accepted one (it was not counted at all)
        assert record["bytes"]["up_rejected"] == {
            role: n // 2 for role, n in record["bytes"]["up"].items()}
    assert len(records) == 2


DRIFT = {"ROLORA_TEST_FAULTS": "3:2:drift"}


def test_two_distributed_clients_on_one_data_share_are_told_apart(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int]) -> None:
    """Both clients given ``distribute.data_idx`` 1: share 1 trained
    twice, share 2 never, and the run said nothing. The client that
    claims share 1 second is refused every round, naming the share and
    its owner; the run goes on with the other (rolora.min_received 1)."""
    rounds = {"client_num": 2, "total_round_num": 2}

    codes, logs = run_distributed(
        fs_main, tiny_model_dir, tiny_glue_root, tmp_path, free_ports,
        rounds, own={0: {"rolora": {"min_received": 1}},
                     2: {"distribute": {"data_idx": 1}}})

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    owner = records[0]["clients"]
    assert len(owner) == 1, records
    other = 3 - owner[0]
    for record in records:
        assert record["clients"] == owner
        assert record["rejected"] == {str(other): (
            f"invalid update: client {other}, round {record['round']}: "
            f"trained on data share 1, which is client {owner[0]}'s; each "
            "client needs its own share, one of 1..2 (distribute.data_idx)")}
        assert record["bytes"]["up_rejected"]


def test_a_distributed_client_on_other_data_is_left_out(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int]) -> None:
    """``data.root`` may differ by machine, the rows it holds may not:
    the second client reads a copy with one train label flipped, and
    trained on it into the run without a word. Its updates are now
    refused, naming the data digest."""
    edited = tmp_path / "edited"
    shutil.copytree(tiny_glue_root, edited)
    train = edited / "SST-2" / "train.tsv"
    lines = train.read_text(encoding="utf-8").splitlines()
    text, label = lines[1].rsplit("\t", 1)
    lines[1] = f"{text}\t{1 - int(label)}"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")

    codes, logs = run_distributed(
        fs_main, tiny_model_dir, tiny_glue_root, tmp_path, free_ports,
        {"client_num": 2, "total_round_num": 2},
        own={0: {"rolora": {"min_received": 1}},
             2: {"data": {"root": str(edited)}}})

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    left_out = {c for record in records for c in record["rejected"]}
    assert len(left_out) == 1, records
    client = left_out.pop()
    for record in records:
        refused = record["rejected"][client]
        assert "another config than the server's: train and test rows " \
            "as read and dealt (data_digest) (" in refused
        assert "base_digest" not in refused
        assert len(record["clients"]) == 1


def assert_drifted_client_resynced(records: list[dict[str, Any]],
                                   embedded: list[dict[str, Any]],
                                   clients: int = 3) -> None:
    """Client 2 drifted a frozen tensor in round 3: refused for its
    fingerprint, its upload counted as refused traffic, then re-synced in
    full and accepted in round 4 (every byte as in the embedded runner,
    whose test checks the client's whole adapter at the start of round 4
    against the server's)."""
    assert list(records[2]["rejected"]) == ["2"]
    assert "frozen-factor fingerprint" in records[2]["rejected"]["2"]
    assert records[2]["bytes"]["up_rejected"]
    assert records[3]["rejected"] == {}
    assert records[3]["clients"] == list(range(1, clients + 1))
    # The frozen head travels only to repair a client: round 4's full
    # re-sync of client 2 (RoLoRA's would otherwise send B alone).
    assert "head" in records[3]["bytes"]["down"]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]


@pytest.mark.parametrize(("method", "shared"), [
    ("rolora", True), ("lora", False), ("ffa_lora", True)])
def test_a_drifted_client_is_resynced_in_standalone_mode(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, method: str, shared: bool) -> None:
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": method, "total_round_num": 4,
                             "share_local_model": shared})
    cfg = write_config(tmp_path / "drift.yaml", tree)

    records = read_jsonl(fs_main.run(cfg, env=DRIFT).run_dir
                         / "metrics.jsonl")

    embedded = embedded_records(cfg, tmp_path / "embedded",
                                faults=DRIFT["ROLORA_TEST_FAULTS"])
    assert_drifted_client_resynced(records, embedded)


def test_a_drifted_client_is_resynced_in_distributed_mode(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int]) -> None:
    rounds = {"client_num": 2, "total_round_num": 4}
    standalone = write_config(tmp_path / "standalone.yaml", fs_tree(
        tiny_model_dir, tiny_glue_root, tmp_path / "st", federate=rounds))

    codes, logs = run_distributed(fs_main, tiny_model_dir, tiny_glue_root,
                                  tmp_path, free_ports, rounds, env=DRIFT)

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    embedded = embedded_records(standalone, tmp_path / "embedded",
                                faults=DRIFT["ROLORA_TEST_FAULTS"])
    assert_drifted_client_resynced(records, embedded, clients=2)


def faulty_upload_run(fs_main: FsMain, tiny_model_dir: Path,
                      tiny_glue_root: Path, tmp_path: Path, fault: str
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                 list[int], int]:
    """Two of 4 clients drawn a round: round 2's first drawn client
    sends its upload as ``fault`` says (``spoof``: again as the first
    client not drawn). The plugin's and the embedded runner's (no
    fault) records, round 2's drawn clients and the client not drawn."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"client_num": 4, "sample_client_rate": 0.5,
                             "total_round_num": 3,
                             "share_local_model": False})
    cfg = write_config(tmp_path / "faulty.yaml", tree)
    embedded = embedded_records(cfg, tmp_path / "embedded")
    drawn = embedded[1]["clients"]
    stranger = min(set(range(1, 5)) - set(drawn))
    spec = f"2:{drawn[0]}:{fault}" + (f"={stranger}" if fault == "spoof"
                                      else "")
    run = fs_main.run(cfg, env={"ROLORA_TEST_FAULTS": spec})
    return (read_jsonl(run.run_dir / "metrics.jsonl"), embedded, drawn,
            stranger)


@pytest.mark.parametrize("fault", ["twice", "spoof", "early"])
def test_an_upload_that_answers_nothing_closes_no_round(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, fault: str) -> None:
    """FederatedScope's buffer closes a round once it holds as many
    uploads as clients were drawn. A second upload, one under the name
    of a client not drawn, or one stamped for the next round used to
    count there: the round closed before a drawn client's update came
    (which was then dropped as out of date) or the second upload
    replaced the first, with nothing recorded and no byte counted. Now
    the first two are refused at arrival and named in the round's line;
    the third is its client's answer, refused."""
    records, embedded, drawn, stranger = faulty_upload_run(
        fs_main, tiny_model_dir, tiny_glue_root, tmp_path, fault)

    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[0]["bytes"] == embedded[0]["bytes"]
    got, want = records[1], embedded[1]
    one_upload = {role: n // 2 for role, n in want["bytes"]["up"].items()}
    assert got["bytes"]["up_rejected"] == one_upload
    assert got["bytes"]["down"] == want["bytes"]["down"]
    if fault == "early":
        assert got["clients"] == drawn[1:]
        assert got["rejected"] == {str(drawn[0]): (
            f"invalid update: client {drawn[0]}, round 2: stamped for "
            "round 3")}
        assert "unexpected" not in got
        assert got["bytes"]["up"] == want["bytes"]["up"]
    else:
        assert got["clients"] == drawn
        assert got["rejected"] == {}
        sender, reason = (stranger, "not drawn for round 2") \
            if fault == "spoof" else (drawn[0], "a second upload in round 2")
        assert got["unexpected"] == [{"client": sender, "reason": reason}]
        assert got["bytes"]["up"] == {
            role: 3 * n for role, n in one_upload.items()}
    assert all(r["rejected"] == {} and "unexpected" not in r
               for r in records[2:])


def assert_second_upload_spoilt_nothing(records: list[dict[str, Any]],
                                        client: int, clients: int) -> None:
    """Client ``client`` sent round 2's upload twice, all ``clients``
    drawn every round: every upload of every round is accepted, and the
    copy is refused where it arrived, in round 2 (its answer already
    in) or in round 3, if round 2 had closed on its first upload (a
    past round's). There it used to be refused in the core, which then
    refused the client's round-3 answer too."""
    assert [r["clients"] for r in records] == \
        [list(range(1, clients + 1))] * 3
    assert all(r["rejected"] == {} for r in records)
    late = "unexpected" not in records[1]
    where = records[2] if late else records[1]
    reason = "stamped for round 2, a past one" if late \
        else "a second upload in round 2"
    assert where["unexpected"] == [{"client": client, "reason": reason}]
    # round 2 holds each client's upload, and the copy if it came then
    copies = clients if late else clients + 1
    assert where["bytes"]["up_rejected"] == {
        role: n // copies for role, n in records[1]["bytes"]["up"].items()}
    assert all("unexpected" not in r for r in records if r is not where)


def test_a_second_upload_after_its_round_closed_spoils_nothing(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 3})
    cfg = write_config(tmp_path / "late.yaml", tree)

    run = fs_main.run(cfg, env={"ROLORA_TEST_FAULTS": "2:3:twice"})

    records = read_jsonl(run.run_dir / "metrics.jsonl")
    assert_second_upload_spoilt_nothing(records, client=3, clients=3)


def test_a_second_upload_is_refused_in_distributed_mode(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, free_ports: list[int]) -> None:
    rounds = {"client_num": 2, "total_round_num": 3}

    codes, logs = run_distributed(fs_main, tiny_model_dir, tiny_glue_root,
                                  tmp_path, free_ports, rounds,
                                  env={"ROLORA_TEST_FAULTS": "2:1:twice"})

    assert codes == [0, 0, 0], logs
    records = read_jsonl(tmp_path / "dist" / "server0" / "metrics.jsonl")
    assert_second_upload_spoilt_nothing(records, client=1, clients=2)


# --- per-client evaluation ---------------------------------------------------


def own_model_scores(log_text: str) -> dict[int, dict[int, Any]]:
    """Each client's logged score of its own model, by round (1-based)
    and client: ``(metrics, test examples)`` as ``mean_over_clients``
    takes them."""
    from federatedscope_rolora.fs.records import eval_record

    out: dict[int, dict[int, Any]] = {}
    for line in log_text.splitlines():
        if "(own model)" not in line:
            continue
        entry = ast.literal_eval(line[line.index("{'Role'"):])
        client = int(entry["Role"].split("#")[1].split()[0])
        raw = entry["Results_raw"]
        out.setdefault(int(entry["Round"]) + 1, {})[client] = (
            eval_record(raw, ("acc",)), int(raw["test_total"]))
    return out


def assert_merged_from_clients(record: dict[str, Any],
                               scores: dict[int, Any]) -> None:
    from federatedscope_rolora.training.metrics import mean_over_clients

    want = mean_over_clients(scores)
    got = record["eval_per_client"]
    assert (got["clients"], got["examples"]) == \
        (want["clients"], want["examples"])
    for form in ("example_weighted", "client_mean"):
        assert got[form] == pytest.approx(want[form], rel=1e-6)


# Each client's own model scored from the run's saved files, outside
# FederatedScope's run: the final global adapter (the server's A) with the
# client's own B (``adapter/personal_client<ID>.safetensors``; a client
# never drawn has none and keeps the initial B), on the test share that
# FederatedScope's splitter deals it (the plugin's data builder, again).
DIRECT = """\
import json, sys
from pathlib import Path

import torch
from federatedscope.core.configs.config import global_cfg
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from federatedscope_rolora.config import load_config
from federatedscope_rolora.fs.data import IDS, MASK, TYPES, load_data
from federatedscope_rolora.training.glue import task_spec
from federatedscope_rolora.training.models import (
    LoraSpec, build_model, get_adapter_state, load_adapter_state)

cfg_file, adapter_dir = sys.argv[1], Path(sys.argv[2])
# "DIR": the files of every client, client ID = data index (standalone);
# "DIR@I": one process's file, whatever ID the server gave that process
# (distributed: IDs go by join order), kept with the process's data I
own = {}
for arg in sys.argv[3:]:
    folder, _, index = arg.partition("@")
    for path in sorted(Path(folder).glob("personal_client*.safetensors")):
        tensors = {k.split("/", 1)[1]: v
                   for k, v in load_file(str(path)).items()}
        client = int(index) if index else \
            int(path.stem[len("personal_client"):])
        own[client] = tensors
cfg = load_config(cfg_file)
model, _ = build_model(cfg.model_name, task_spec(cfg.task).num_labels,
                       LoraSpec.from_args(cfg.lora), cfg["seed"])
set_peft_model_state_dict(model, load_file(
    str(adapter_dir / "adapter_model.safetensors")))
model.eval()
server = {k: v.clone() for k, v in get_adapter_state(model).items()}
fs_cfg = global_cfg.clone()
fs_cfg.merge_from_file(cfg_file)
data, _ = load_data(fs_cfg)
out = {}
for client in range(1, cfg["federate.client_num"] + 1):
    load_adapter_state(model, server)
    load_adapter_state(model, own.get(client, {}))
    rows = data[client].test_data
    xs, ys = zip(*[rows[i] for i in range(len(rows))])
    x, y = torch.stack(xs), torch.tensor(ys)
    inputs = {"input_ids": x[:, IDS], "attention_mask": x[:, MASK]}
    if x.shape[1] > TYPES:
        inputs["token_type_ids"] = x[:, TYPES]
    with torch.no_grad():
        logits = model(**inputs).logits
    out[client] = [int((logits.argmax(1) == y).sum()) / len(y),
                   float(torch.nn.functional.cross_entropy(logits, y)),
                   len(y)]
print(json.dumps(out))
"""


def assert_scores_are_the_clients_own_models(
        fs_main: FsMain, cfg: Path, record: dict[str, Any],
        adapter_dir: Path, personal_dirs: list[Path] | list[str]) -> None:
    """The last round's ``eval_per_client`` is ``DIRECT``'s scores of each
    client's own model, merged as the embedded runner merges them.
    ``personal_dirs``: folders of ``personal_client<ID>`` files, or
    ``DIR@I`` for a distributed process that holds data share I (its ID
    is the server's, by join order, and need not be I)."""
    from federatedscope_rolora.training.metrics import mean_over_clients

    proc = subprocess.run(
        [str(fs_main.venv.python), "-c", DIRECT, str(cfg),
         str(adapter_dir), *map(str, personal_dirs)],
        env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    direct = json.loads(proc.stdout.splitlines()[-1])
    want = mean_over_clients({int(c): ({"acc": acc, "loss": loss}, n)
                              for c, (acc, loss, n) in direct.items()})
    got = record["eval_per_client"]
    assert got["examples"] == want["examples"]
    for form in ("example_weighted", "client_mean"):
        assert got[form]["acc"] == pytest.approx(want[form]["acc"],
                                                 abs=1e-9)
        assert got[form]["loss"] == pytest.approx(want[form]["loss"],
                                                  rel=1e-4)


@pytest.mark.parametrize("shared", [True, False])
def test_fedsa_scores_each_clients_own_model_in_standalone_mode(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, shared: bool) -> None:
    """Two of three clients per round, evaluated at rounds 2 and 3:
    every client is sent what it lacks for its own model (A; a client
    never drawn also the initial B), counted as eval_down exactly as in
    the embedded runner, and scores it on its own test share; the
    round's line holds the clients' scores merged as the embedded runner
    merges them, apart from the global adapter's (whose B is the
    server's untrained one)."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": "fedsa_lora", "client_num": 3,
                             "sample_client_num": 2, "total_round_num": 3,
                             "share_local_model": shared},
                   eval={"freq": 2})
    cfg = write_config(tmp_path / "fedsa.yaml", tree)

    run = fs_main.run(cfg)
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert [r["round"] for r in records] == [1, 2, 3]
    assert ["eval_per_client" in r for r in records] == \
        [False, True, True] == ["eval_per_client" in r for r in embedded]
    assert [r["clients"] for r in records] == \
        [r["clients"] for r in embedded]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    assert records[0]["bytes"]["eval_down"] == {}
    assert set(records[1]["bytes"]["eval_down"]) >= {"lora_A"}
    own = own_model_scores((run.run_dir / "exp_print.log").read_text(
        encoding="utf-8"))
    assert sorted(own) == [2, 3]
    for record in records[1:]:
        assert_merged_from_clients(record, own[record["round"]])
        personal = record["eval_per_client"]
        assert personal["clients"] == 3
        # FederatedScope's splitter deals the whole test set out
        assert personal["examples"] == \
            embedded[record["round"] - 1]["eval_per_client"]["examples"]
        assert personal["example_weighted"]["loss"] != \
            pytest.approx(record["eval"]["loss"])
    assert_scores_are_the_clients_own_models(
        fs_main, cfg, records[-1], run.run_dir / "adapter",
        [run.run_dir / "adapter"])
    summary = json.loads((run.run_dir / "summary.json").read_text(
        encoding="utf-8"))
    assert summary["final_per_client"] == records[-1]["eval_per_client"]
    assert summary["bytes_eval_down_total"] == sum(
        sum(r["bytes"]["eval_down"].values()) for r in records) > 0


def test_fedsa_saves_a_refused_clients_b_as_it_is_scored(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """Client 2 is refused in the last round: it is scored (and would be
    re-synced) with the server's initial B, and the finish message tells
    it to save that B, not the one it trained; the saved files give
    the recorded scores, as in the embedded runner."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": "fedsa_lora", "client_num": 3,
                             "total_round_num": 2,
                             "share_local_model": False},
                   eval={"freq": 2})
    cfg = write_config(tmp_path / "fedsa.yaml", tree)
    faults = {"ROLORA_TEST_FAULTS": "2:2:drift"}

    run = fs_main.run(cfg, env=faults)
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded",
                                faults=faults["ROLORA_TEST_FAULTS"])

    assert list(records[-1]["rejected"]) == ["2"]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    assert_scores_are_the_clients_own_models(
        fs_main, cfg, records[-1], run.run_dir / "adapter",
        [run.run_dir / "adapter"])


def test_per_client_eval_always_scores_the_global_lora_on_each_share(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """LoRA keeps nothing on its clients: each client's model is the
    global adapter, so its scores over the shares, weighted by their
    rows, are the global adapter's on the whole test set."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": "lora", "total_round_num": 2,
                             "share_local_model": False},
                   rolora={"head": "frozen", "threads": 1,
                           "per_client_eval": "always"})
    cfg = write_config(tmp_path / "lora.yaml", tree)

    records = read_jsonl(fs_main.run(cfg).run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    for record in records:
        personal = record["eval_per_client"]
        assert personal["clients"] == 3
        assert personal["example_weighted"]["acc"] == \
            pytest.approx(record["eval"]["acc"])
        assert personal["example_weighted"]["loss"] == \
            pytest.approx(record["eval"]["loss"], rel=1e-5)


def test_a_tok_len_beyond_the_models_positions_is_named(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """As in the embedded runner: the tiny BERT has 64 positions, so 65
    tokens stop the run at model build, naming the key (not in every
    client's first forward pass)."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   llm={"tok_len": 65})
    cfg = write_config(tmp_path / "long.yaml", tree)

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert "'llm.tok_len' (65) exceeds the 64 tokens model" in run.log


def test_fedex_lora_on_an_embedding_stops_at_model_build(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """As in the embedded runner: the model builder refuses an adapted
    layer the residual cannot be folded into, before any round."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"method": "fedex_lora", "total_round_num": 1})
    tree["llm"]["adapter"]["args"][0]["target_modules"] = [
        "word_embeddings", "query"]
    cfg = write_config(tmp_path / "embed.yaml", tree)

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert "adapts word_embeddings (Embedding) of" in run.log
    assert "rolora round 1" not in run.log


def test_a_model_folder_with_an_at_sign_runs_in_the_plugin(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """As in the embedded runner, '@' in a folder of model.type is part
    of the path, with or without the suffix."""
    import shutil

    model = tmp_path / "m@v2" / "model"
    shutil.copytree(tiny_model_dir, model)
    tree = fs_tree(model, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1})
    tree["model"]["type"] = f"{model}@huggingface_seqcls"
    cfg = write_config(tmp_path / "at.yaml", tree)

    records = read_jsonl(fs_main.run(cfg).run_dir / "metrics.jsonl")

    assert [r["round"] for r in records] == [1]


@pytest.mark.parametrize(("entries", "named"), [
    # FederatedScope: a bare AssertionError ("'a' (cur type NoneType)
    # must be an instance of CfgNode")
    (["client_1"], "it has no entry for client_2, client_3"),
    # FederatedScope ignored them, exit 0
    (["client_1", "client_2", "client_3", "client4"],
     "entries client4 name no client"),
])
def test_a_client_config_file_must_name_each_client_once(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, entries: list[str], named: str) -> None:
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1})
    cfg = write_config(tmp_path / "run.yaml", tree)
    clients = write_config(tmp_path / "clients.yaml", {
        name: {"use_gpu": False} for name in entries})

    run = fs_main.run(cfg, "--client_cfg", str(clients), check=False)

    assert run.proc.returncode != 0
    assert f"--client_cfg: {named}; FederatedScope needs one entry per " \
        "client, client_1 .. client_3" in run.log
    assert "rolora round 1" not in run.log


def test_an_lda_test_split_missing_a_label_is_named(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """FederatedScope deals the test rows by the train rows' label
    shares: one test row holds one label, and its splitter stopped in a
    bare AssertionError."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1},
                   data={"root": str(tiny_glue_root), "type": "sst2@glue",
                         "splitter": "lda",
                         "splitter_args": [{"alpha": 1.0}]},
                   rolora={"head": "frozen", "threads": 1,
                           "eval_samples": 1})
    cfg = write_config(tmp_path / "lda.yaml", tree)

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert "data.splitter lda deals the 1 test rows like the 240 train " \
        "rows, label by label, so both need the same labels (only in the " \
        "train rows: " in run.log
    assert "rolora round 1" not in run.log


def test_a_config_without_client_num_is_told_to_set_it(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """FederatedScope's default of 0 takes the clients from a dataset's
    partition; the plugin said "must be >= 1, got 0" of a key the file
    never set."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs")
    del tree["federate"]["client_num"]
    cfg = write_config(tmp_path / "run.yaml", tree)

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert "config key 'federate.client_num' is 0, FederatedScope's " \
        "default" in run.log
    assert "rolora round 1" not in run.log


@pytest.mark.parametrize(("where", "key", "value", "named"), [
    ("file", "llm.adapter.use", False,
     "config key 'llm.adapter.use' must be True"),
    ("command line", "trainer.type", "general",
     "config key 'trainer.type' must be one of rolora_trainer"),
    ("file", "data.splitter", "", "config key 'data.splitter' must be one "
     "of iid, lda"),
])
def test_fs_defaults_the_embedded_runner_refuses_are_refused_written_out(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, where: str, key: str, value: Any, named: str
        ) -> None:
    """The plugin replaces FederatedScope's default where it cannot work;
    written in the config it was replaced too, without a word, where the
    embedded runner refuses the same file (one file, two meanings)."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1})
    opts: list[str] = []
    if where == "file":
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    else:
        opts = [key, repr(value)]
    cfg = write_config(tmp_path / "run.yaml", tree)

    run = fs_main.run(cfg, *opts, check=False)

    assert run.proc.returncode != 0
    assert f"{named}" in run.log and "(set in the config; the plugin " \
        "replaces only FederatedScope's default, left unset)" in run.log
    assert "rolora round 1" not in run.log


def test_a_client_config_that_changes_training_is_refused(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """FederatedScope merges --client_cfg into each client's config: a
    learning rate of 1e-12 for every client used to run silently (nothing
    learnt); the plugin's clients train alike, as the embedded runner's."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1})
    cfg = write_config(tmp_path / "run.yaml", tree)
    clients = write_config(tmp_path / "clients.yaml", {
        f"client_{i}": {"train": {"optimizer": {"lr": 1.0e-12}}}
        for i in (1, 2, 3)})

    run = fs_main.run(cfg, "--client_cfg", str(clients), check=False)

    assert run.proc.returncode != 0
    assert "client 1's config changes train.optimizer.lr" in run.log
    assert "rolora round 1" not in run.log


@pytest.mark.parametrize("fallback", [False, True],
                         ids=["main.py", "fs-main"])
def test_a_config_file_with_a_key_twice_is_refused(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, fallback: bool) -> None:
    """FederatedScope's yacs loader kept the last of two ``federate:``
    blocks without a word: this file ran LoRA. As in the embedded
    runner, it is refused naming the key."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"total_round_num": 1})
    cfg = write_config(tmp_path / "twice.yaml", tree)
    cfg.write_text(cfg.read_text(encoding="utf-8")
                   + "federate:\n  method: lora\n  total_round_num: 1\n",
                   encoding="utf-8")

    run = fs_main.run(cfg, check=False, fallback=fallback)

    assert run.proc.returncode != 0
    assert "key 'federate' is given twice" in run.log
    assert "rolora round 1" not in run.log
    if fallback:  # fs-main answers bad input as the embedded runner does
        assert run.proc.returncode == 2
        assert "Traceback" not in run.log
        assert "federatedscope-rolora fs-main: error: " in run.log


def test_more_clients_than_train_examples_is_named(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path) -> None:
    """As in the embedded runner (one file, one meaning): 300 clients on
    the tiny task's 240 train examples stop the run at data build,
    naming the key, not in FederatedScope's model builder."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"client_num": 300, "sample_client_num": 2,
                             "total_round_num": 1})
    cfg = write_config(tmp_path / "crowd.yaml", tree)
    named = ("cannot split 240 train examples over federate.client_num=300 "
             "clients with data.splitter 'iid'")

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert named in run.log
    with pytest.raises(ValueError, match=named):
        embedded_records(cfg, tmp_path / "embedded")


@pytest.mark.parametrize("clients, alpha, named", [
    # FederatedScope redraws forever: no draw gives 200 clients an
    # example each from 240 near one-label shares
    (200, 0.01, "fewer than 1 examples in 1000 draws"),
    # FederatedScope's splitter asserts more examples than clients
    (240, 100.0, "needs more than 240 examples, and there are 240"),
])
def test_an_lda_split_the_embedded_runner_refuses_is_refused(
        fs_main: FsMain, tiny_model_dir: Path, tiny_glue_root: Path,
        tmp_path: Path, clients: int, alpha: float, named: str) -> None:
    """One file, one meaning: the same message from both runners, at
    data build, where FederatedScope would hang or fail an assertion."""
    tree = fs_tree(tiny_model_dir, tiny_glue_root, tmp_path / "fs",
                   federate={"client_num": clients, "sample_client_num": 2,
                             "total_round_num": 1},
                   data={"splitter": "lda",
                         "splitter_args": [{"alpha": alpha}]})
    cfg = write_config(tmp_path / "lda.yaml", tree)
    split = ("cannot split 240 train examples over "
             f"federate.client_num={clients} clients with data.splitter "
             "'lda'")

    run = fs_main.run(cfg, check=False)

    assert run.proc.returncode != 0
    assert split in run.log and named in run.log
    with pytest.raises(ValueError, match=named) as refused:
        embedded_records(cfg, tmp_path / "embedded")
    assert split in str(refused.value)


def test_the_plugin_runs_on_your_own_data(
        fs_main: FsMain, tiny_model_dir: Path, tmp_path: Path) -> None:
    """``data.type: tickets@tsv`` (three labels, two text columns) under
    FederatedScope: its data builder claims it, the model gets a
    3-output head, and the rounds move the embedded runner's bytes."""
    root = write_own_data(tmp_path / "data")
    tree = fs_tree(tiny_model_dir, root, tmp_path / "fs",
                   federate={"total_round_num": 2},
                   data={"type": "tickets@tsv"})
    cfg = write_config(tmp_path / "own.yaml", tree)

    run = fs_main.run(cfg)
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    embedded = embedded_records(cfg, tmp_path / "embedded")

    assert [r["round"] for r in records] == [1, 2]
    assert [r["bytes"] for r in records] == [r["bytes"] for r in embedded]
    assert 0.0 <= records[-1]["eval"]["acc"] <= 1.0
    assert 0.0 <= records[-1]["eval"]["f1_macro"] <= 1.0
    summary = json.loads((run.run_dir / "summary.json").read_text(
        encoding="utf-8"))
    assert summary["task"] == "tickets@tsv"
    assert summary["labels"] == ["billing", "bug", "praise"]
    assert summary["text_columns"] == ["title", "body"]
