"""The plugin's recorder without FederatedScope: with per-client
evaluation a round's line waits for every client's score, lines stay in
round order whatever order the scores come in, and a client without
test rows is left out of the means."""

from __future__ import annotations

from pathlib import Path

from federatedscope_rolora.core.accounting import TrafficLedger
from federatedscope_rolora.core.methods import make_method
from federatedscope_rolora.fs.records import RunRecorder
from federatedscope_rolora.runners.outputs import read_metrics
from federatedscope_rolora.training.metrics import mean_over_clients


def play_round(recorder: RunRecorder, round_idx: int,
               acc: float) -> None:
    recorder.open_round(make_method("fedsa_lora").plan(round_idx), [1, 2])
    recorder.trained({1: (0.5, 10), 2: (0.7, 10)}, {}, 0.1)
    recorder.close_round({"test_acc": acc, "test_avg_loss": 1.0})


def test_lines_wait_for_the_clients_scores_in_round_order(
        tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, TrafficLedger(), ("acc",))
    recorder.expect_scores(1, [1, 2, 3])
    play_round(recorder, 1, 0.5)
    recorder.expect_scores(2, [1, 2, 3])
    play_round(recorder, 2, 0.6)
    play_round(recorder, 3, 0.7)  # not evaluated per client

    assert not recorder.scored(2, 1, {"test_acc": 1.0}, 5)
    assert not recorder.scored(1, 3, {"test_acc": 0.25,
                                      "test_avg_loss": 1.0}, 30)
    assert read_metrics(tmp_path) == []
    assert not recorder.scored(1, 2, {}, 0)  # no test row
    assert not recorder.scored(1, 2, {"test_acc": 0.9}, 9)  # twice: dropped
    assert recorder.scored(1, 1, {"test_acc": 0.75, "test_avg_loss": 2.0},
                           10)
    assert [r["round"] for r in read_metrics(tmp_path)] == [1]
    assert recorder.pending() == [2]
    assert not recorder.scored(2, 3, {"test_acc": 0.0}, 5)
    assert recorder.scored(2, 2, {"test_acc": 0.5}, 10)

    lines = read_metrics(tmp_path)
    assert [r["round"] for r in lines] == [1, 2, 3]
    assert lines[0]["eval_per_client"] == mean_over_clients({
        1: ({"acc": 0.75, "loss": 2.0}, 10),
        3: ({"acc": 0.25, "loss": 1.0}, 30)})
    assert lines[0]["eval_per_client"]["clients"] == 2
    assert lines[1]["eval_per_client"]["example_weighted"] == \
        {"acc": (5 + 5) / 20}
    assert "eval_per_client" not in lines[2]
    assert lines[0]["eval"] == {"acc": 0.5, "loss": 1.0}


def test_the_summary_writes_a_line_still_waiting(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, TrafficLedger(), ("acc",))
    recorder.expect_scores(1, [1, 2])
    play_round(recorder, 1, 0.5)
    recorder.scored(1, 2, {"test_acc": 1.0}, 4)

    summary = recorder.write_summary({})

    assert [r["eval_per_client"]["clients"]
            for r in read_metrics(tmp_path)] == [1]
    assert summary["final_per_client"]["example_weighted"] == {"acc": 1.0}
