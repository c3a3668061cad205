"""GLUE head-to-head benchmarks: the quick run on the tiny model, the
analytic byte count, and the run store that lets a suite resume.

The tests marked slow share one quick run of the script (tiny BERT, tiny
SST-2); the others need no model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import write_sst2, write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
SCRIPT = BENCH / "glue_head_to_head.py"
METHODS = ("rolora", "lora", "ffa_lora", "fedex_lora", "flexlora",
           "fedsa_lora")
BASE_METHODS = ("rolora", "lora", "ffa_lora")
Run = dict[str, Any]


def load(name: str) -> ModuleType:
    """Import a benchmark module (benchmarks/ is not a package)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return __import__(name)


def run_script(out: Path, model: Path, glue: Path, *extra: str
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--model", str(model),
         "--glue-root", str(glue), "--out", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One quick run of every benchmark on the tiny BERT and tiny SST-2."""
    base = tmp_path_factory.mktemp("glue_bench")
    model = write_tiny_bert(base / "tiny")
    glue = write_sst2(base / "glue")
    out = base / "out"
    proc = run_script(out, model, glue)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "glue_quick_head_to_head.json").read_text())
    return {"out": out, "model": model, "glue": glue, "data": data,
            "stdout": proc.stdout}


@pytest.mark.slow
def test_measured_bytes_equal_the_analytic_count(quick: Run) -> None:
    comm = quick["data"]["comm"]

    assert comm, "no communication rows"
    assert all(r["per_client"] == r["analytic"] for r in comm)


@pytest.mark.slow
def test_rolora_and_ffa_upload_half_of_lora(quick: Run) -> None:
    frozen = [r for r in quick["data"]["comm"] if r["head"] == "frozen"
              and r["clients"] == 3]
    up = {(r["method"], r["round"]): sum(r["per_client"]["up"].values())
          for r in frozen}

    for t in (1, 2, 3):
        assert 2 * up[("rolora", t)] == up[("lora", t)]
        assert 2 * up[("ffa_lora", t)] == up[("lora", t)]


@pytest.mark.slow
def test_rolora_alternates_the_factor_it_sends(quick: Run) -> None:
    rows = [r for r in quick["data"]["comm"] if r["method"] == "rolora"
            and r["head"] == "frozen" and r["clients"] == 3]

    sent = [sorted(r["per_client"]["up"]) for r in rows]

    assert sent == [["lora_B"], ["lora_A"], ["lora_B"]]


@pytest.mark.slow
def test_every_table_has_every_method_and_seed(quick: Run) -> None:
    data = quick["data"]
    seeds = data["plan"]["seeds"]

    for cells in data["clients"]["sst2"].values():
        assert {m: sorted(v) for m, v in cells.items()} == \
            dict.fromkeys(METHODS, [str(s) for s in seeds])
    for table, methods in (("rank", METHODS), ("skew", BASE_METHODS),
                           ("local", METHODS),
                           ("pairs", BASE_METHODS)):
        for cells in data[table].values():
            assert set(cells) == set(methods)
            assert all(cells[m] for m in methods)
    assert set(data["best_lr"]) == set(METHODS)


@pytest.mark.slow
def test_fedex_residual_grows_with_the_clients(quick: Run) -> None:
    """The comm benchmark at 3 and 6 clients (quick): FedEx-LoRA's round-2
    residual per client is (n-1)·r·2·hidden values per module while that
    is below hidden², so twice the clients send more; no other method
    sends one, and FedSA-LoRA uploads A alone."""
    rows = [r for r in quick["data"]["comm"] if r["head"] == "frozen"]
    residual = {r["clients"]: r["per_client"]["down"]["residual"]
                for r in rows if r["method"] == "fedex_lora"
                and r["round"] == 2}

    assert sorted(residual) == [3, 6]
    assert residual[6] > residual[3] > 0
    assert all("residual" not in r["per_client"]["down"] for r in rows
               if r["method"] != "fedex_lora")
    assert {tuple(r["per_client"]["up"]) for r in rows
            if r["method"] == "fedsa_lora"} == {("lora_A",)}
    assert "| 6 | fedex_lora |" in quick["stdout"]
    assert "fedsa_lora (per client)" in quick["stdout"]


@pytest.mark.slow
def test_outputs_name_the_command_and_draw_plots(quick: Run) -> None:
    out = quick["out"]

    names = {p.name for p in out.iterdir()}

    assert quick["data"]["command"].startswith(
        "python benchmarks/glue_head_to_head.py --quick")
    for plot in ("clients", "skew", "rank", "lr_grid", "comm", "curves",
                 "local", "pairs"):
        assert f"glue_quick_{plot}.png" in names
    assert "| rolora |" in quick["stdout"]
    assert "glue_quick_runs.jsonl" in names


@pytest.mark.slow
def test_restart_skips_finished_runs(quick: Run) -> None:
    runs = quick["out"] / "glue_quick_runs.jsonl"
    before = runs.read_text()

    proc = run_script(quick["out"], quick["model"], quick["glue"])

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs.read_text() == before


@pytest.mark.slow
def test_coverage_counts_every_planned_run_once(quick: Run) -> None:
    cov = quick["data"]["coverage"]
    lines = (quick["out"] / "glue_quick_runs.jsonl").read_text().splitlines()

    assert all(c["done"] == c["planned"] for c in cov.values())
    assert cov["all"]["done"] == len(lines)
    assert cov["all"]["planned"] < sum(
        c["planned"] for name, c in cov.items() if name != "all")


@pytest.mark.slow
def test_chance_is_the_majority_share_of_the_test_rows(quick: Run) -> None:
    from federatedscope_rolora.training.partition import subsample_indices

    dev = (quick["glue"] / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    labels = [int(line.rsplit("\t", 1)[1]) for line in dev]
    rows = subsample_indices(len(labels), 16, 1)  # quick: 16 rows, seed 0
    share = max(sum(labels[i] == y for i in rows) for y in (0, 1)) / 16

    assert quick["data"]["chance"]["sst2"] == {"0": share}
    assert f"sst2 {share * 100:.2f}%" in quick["stdout"]


@pytest.mark.slow
def test_local_runs_do_the_local_work_they_name(quick: Run) -> None:
    rows = [json.loads(line) for line in
            (quick["out"] / "glue_quick_runs.jsonl").read_text().splitlines()]
    plan = quick["data"]["plan"]
    local = [r for r in rows if r["spec"]["clients"] in plan["local_clients"]
             and r["spec"]["local_epochs"] > 1]

    assert len(local) == len(METHODS) * len(plan["local_seeds"]) * \
        len(plan["local_clients"])
    sizes = dict(plan["local_sizes"])
    for row in local:
        assert row["spec"]["local_epochs"] == sizes["local_epochs"]
        assert [b["round"] for b in row["bytes_rounds"]] == list(
            range(1, sizes["rounds"] + 1))


def test_suites_side_by_side_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    writer = (
        "import sys; sys.path.insert(0, sys.argv[1]); import _common; "
        "from pathlib import Path; s = _common.Store(Path(sys.argv[2])); "
        "[s.add({'key': f'{sys.argv[3]}{i}', 'pad': 'x' * 300_000}) "
        "for i in range(20)]")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(BENCH),
                               str(path), name]) for name in ("a", "b")]

    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    common = load("_common")
    assert sorted(common.Store(path).rows) == sorted(
        f"{n}{i}" for n in "ab" for i in range(20))


def test_a_line_cut_short_by_a_crash_is_not_stored_and_not_lost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A crash mid-append leaves half a line: that run is taken as not
    stored (it runs again), the half line is dropped when the next row
    is stored, and every whole row stays."""
    common = load("_common")
    path = tmp_path / "runs.jsonl"
    common.Store(path).add({"key": "a", "final": {"acc": 0.5}})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "fin')

    store = common.Store(path)
    assert sorted(store.rows) == ["a"]
    assert "line 2 is cut short" in capsys.readouterr().err
    store.add({"key": "b", "final": {"acc": 0.6}})

    again = common.Store(path)
    assert again.rows["b"]["final"] == {"acc": 0.6}
    assert sorted(again.rows) == ["a", "b"]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_a_damaged_stored_row_is_named_and_a_twice_stored_run_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = load("_common")
    path = tmp_path / "runs.jsonl"
    path.write_text('{"key": "a", "v": 1}\nnot json\n{"key": "b"}\n',
                    encoding="utf-8")

    with pytest.raises(ValueError, match="runs.jsonl: line 2 is not a "
                       "stored run"):
        common.Store(path)

    path.write_text('{"key": "a", "v": 1}\n{"key": "a", "v": 2}\n',
                    encoding="utf-8")
    assert common.Store(path).rows["a"]["v"] == 2
    assert "run a is stored twice (lines 1 and 2)" in \
        capsys.readouterr().err


def test_analytic_count_follows_the_phase() -> None:
    bench = load("glue_head_to_head")
    common = load("_common")
    spec = common.RunSpec(task="sst2", method="rolora", clients=3, seed=0,
                          lr=1e-2, rank=2)
    shapes = {"hidden": 384, "layers": 6}
    factor = 12 * 2 * 384 * 4

    first = bench.analytic_round(spec, shapes, 2, 1)
    second = bench.analytic_round(spec, shapes, 2, 2)
    trained_head = bench.analytic_round(spec.with_(head="trained"), shapes,
                                        2, 1)

    assert first["up"] == {"lora_B": factor}
    assert first["down"] == {"lora_A": factor, "lora_B": factor}
    assert second == {"up": {"lora_A": factor},
                      "down": {"lora_B": factor}}
    head = (384 * 2 + 2) * 4
    assert trained_head["down"] == {"lora_A": factor, "lora_B": factor,
                                    "head": head}
    assert trained_head["up"] == {"lora_B": factor, "head": head}


def test_store_round_trip_and_distinct_keys(tmp_path: Path) -> None:
    common = load("_common")
    spec = common.RunSpec(task="sst2", method="lora", clients=3, seed=0,
                          lr=1e-2)
    store = common.Store(tmp_path / "runs.jsonl")

    store.add({"key": spec.key, "final": {"acc": 0.5}})
    again = common.Store(tmp_path / "runs.jsonl")

    assert spec in again
    assert spec.with_(seed=1) not in again
    assert spec.with_(alpha=0.5).key != spec.key
    assert spec.with_(rank=4).key != spec.key


def test_ordering_ranks_by_mean_and_marks_ties() -> None:
    report = load("_glue_report")

    text = report.ordering({"rolora": {"0": 0.70, "1": 0.72},
                            "lora": {"0": 0.80, "1": 0.80},
                            "ffa_lora": {"0": 0.71, "1": 0.71}})

    assert text == "lora 80.0 > rolora 71.0 = ffa_lora 71.0"
    assert report.ordering({"rolora": {}, "lora": {}}) == ""
    # a per-client score is never passed off as a global one
    assert report.ordering({"fedsa_lora": {"0": 0.6}, "lora": {"0": 0.5}}) \
        == "fedsa_lora (per client) 60.0 > lora 50.0"


def test_ordering_ranks_only_methods_with_every_seed() -> None:
    """SST-2, 20 clients, 5 local epochs, as stored: FedEx-LoRA's third
    seed had not run. Its mean over seeds 0-1 (78.3) beat LoRA's over
    0-2 (77.6), while over seeds 0-1 LoRA leads (78.4)."""
    report = load("_glue_report")

    text = report.ordering({"lora": {"0": 0.7878, "1": 0.7798,
                                     "2": 0.7603},
                            "rolora": {"0": 0.7718, "1": 0.7844,
                                       "2": 0.7534},
                            "fedex_lora": {"0": 0.7913, "1": 0.7741}})

    assert text == ("lora 77.6 > rolora 77.0; not ranked, missing seeds: "
                    "fedex_lora 78.3 (s0, s1 of s0, s1, s2)")


def test_ordering_never_ranks_means_over_different_seeds() -> None:
    """As many seeds is not the same seeds: a mean over seeds 0 and 1
    does not rank against one over 0 and 2 (counting seeds let it)."""
    report = load("_glue_report")

    text = report.ordering({"lora": {"0": 0.60, "2": 0.90},
                            "rolora": {"0": 0.70, "1": 0.72}})

    assert ">" not in text
    assert text == ("not ranked, missing seeds: lora 75.0 (s0, s2 of s0, "
                    "s1, s2), rolora 71.0 (s0, s1 of s0, s1, s2)")


def test_paired_differences_use_the_seeds_both_ran() -> None:
    report = load("_glue_report")

    text = report.paired({"lora": {"0": 0.779, "1": 0.781, "2": 0.757},
                          "rolora": {"0": 0.774, "1": 0.776, "2": 0.773},
                          "flexlora": {"0": 0.70, "2": 0.80}})

    assert text == ("rolora +0.2 ± 1.2 (ahead at 1 of 3 seeds), "
                    "flexlora -1.8 ± 8.6 (ahead at 1 of 2 seeds)")
    assert report.paired({"lora": {"0": 0.5}, "rolora": {"1": 0.6}}) == ""


def test_per_seed_cells_name_their_seeds() -> None:
    report = load("_glue_report")

    assert report._per_seed({"2": 0.735, "0": 0.7}) == "s0 70.0, s2 73.5"
    assert report._per_seed({}) == "not run"
    assert report._chance_text({"0": 0.5092, "1": 0.5092}) == "50.92%"
    assert report._chance_text({"0": 0.515, "1": 0.541}) == \
        "s0 51.50%, s1 54.10%"


def test_report_prose_states_the_sizes_the_plan_runs() -> None:
    """The protocol line and the local table's note name the test rows
    and rounds of the runs behind the cells, not fixed numbers."""
    h2h = load("glue_head_to_head")
    report = load("_glue_report")
    results = {"command": "x", "local": {"6": {"rolora": {}}}}
    full = h2h.replace(h2h.FULL, tasks=("sst2", "qnli"))

    quick_text = report.markdown(results, h2h.QUICK)
    full_text = report.markdown(results, full)

    assert "clients benchmark's cell (2 rounds)" in quick_text
    assert "metric on all test rows (GLUE dev; QNLI, MNLI, QQP: 1000 " \
        "seeded rows)" in full_text
    assert "metric on 16 test rows (GLUE dev)," in quick_text


def test_incomplete_lr_grid_is_an_error(tmp_path: Path) -> None:
    bench = load("glue_head_to_head")
    common = load("_common")

    with pytest.raises(RuntimeError, match="grid incomplete"):
        bench.best_lrs(bench.QUICK, common.Store(tmp_path / "none.jsonl"))


@pytest.mark.parametrize(("clients", "rank", "stacked"), [
    (3, 2, True), (50, 2, True), (50, 8, False)])
def test_analytic_residual_is_its_smaller_exact_form(
        clients: int, rank: int, stacked: bool) -> None:
    """(n-1)·r·(d+k) values per module while below d·k (384² here)."""
    bench = load("glue_head_to_head")
    common = load("_common")
    spec = common.RunSpec(task="sst2", method="fedex_lora",
                          clients=clients, seed=0, lr=1e-2, rank=rank)
    shapes = {"hidden": 384, "layers": 6}

    first = bench.analytic_round(spec, shapes, 2, 1)
    second = bench.analytic_round(spec, shapes, 2, 2)

    per_module = (clients - 1) * rank * 768 if stacked else 384 * 384
    assert first["down"]["residual"] == 0
    assert second["down"]["residual"] == 12 * per_module * 4
    factor = 12 * rank * 384 * 4
    assert second["up"] == {"lora_A": factor, "lora_B": factor}


def test_analytic_count_of_fedsa_sends_a_only() -> None:
    bench = load("glue_head_to_head")
    common = load("_common")
    spec = common.RunSpec(task="sst2", method="fedsa_lora", clients=3,
                          seed=0, lr=1e-2, rank=2)
    factor = 12 * 2 * 384 * 4

    second = bench.analytic_round(spec, {"hidden": 384, "layers": 6}, 2, 2)

    assert second == {"up": {"lora_A": factor},
                      "down": {"lora_A": factor}}


def test_fedsa_cells_hold_the_per_client_score() -> None:
    common = load("_common")
    row = {"spec": {"method": "fedsa_lora"}, "primary_metric": "acc",
           "final": {"acc": 0.5},
           "final_per_client": {"example_weighted": {"acc": 0.8},
                                "client_mean": {"acc": 0.7}}}

    assert common.score(row) == 0.8
    assert common.score({**row, "spec": {"method": "lora"}}) == 0.5
    # without it, the global score stood in under the per-client column
    with pytest.raises(ValueError, match="'k': a fedsa_lora run without "
                       "its per-client final score"):
        common.score({**row, "key": "k", "final_per_client": None})


def test_bad_jobs_is_refused_before_any_run(tmp_path: Path) -> None:
    h2h = load("glue_head_to_head")

    assert h2h.main(["--quick", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny RoLoRA spec, four rounds, and its row run straight through
    in a scratch outdir."""
    common = load("_common")
    base = tmp_path_factory.mktemp("inflight")
    model = write_tiny_bert(base / "tiny")
    glue = write_sst2(base / "glue")
    spec = common.RunSpec(task="sst2", method="rolora", clients=3, seed=0,
                          lr=1e-2, rounds=4, train_samples=48,
                          eval_samples=16, eval_every=2, tok_len=16,
                          model=str(model))
    return {"common": common, "spec": spec, "glue": glue,
            "straight": common.run_one(spec, glue)}


def numbers(row: Run) -> Run:
    """What a row says of the run, timings aside."""
    return {k: row[k] for k in ("key", "final", "best", "curve",
                                "gap_rounds", "bytes_rounds")}


def stop_after_two_rounds(tiny: Run, keep: Path, **changed: Any) -> None:
    """What a suite stopped after round 2 leaves in the run's in-flight
    folder (the same config with fewer rounds, or ``changed``)."""
    from federatedscope_rolora.config import load_config
    from federatedscope_rolora.runners.simulation import run

    common, spec = tiny["common"], tiny["spec"]
    values = common.overrides(spec, tiny["glue"], keep / "run", False)
    run(load_config(None, {**values, "federate.total_round_num": 2,
                           **changed}))


@pytest.mark.slow
def test_a_stopped_run_continues_from_its_checkpoint(
        tiny: Run, tmp_path: Path) -> None:
    common, spec = tiny["common"], tiny["spec"]
    keep = common.inflight_dir(tmp_path / "runs.jsonl", spec)
    stop_after_two_rounds(tiny, keep)

    row = common.run_one(spec, tiny["glue"], keep=keep,
                         store=tmp_path / "runs.jsonl",
                         extra={"device": "here"})

    assert row["resumed_after"] == 2
    assert numbers(row) == numbers(tiny["straight"])
    assert not keep.exists()
    stored = common.Store(tmp_path / "runs.jsonl").get(spec)
    assert stored == json.loads(json.dumps(row))
    assert row["device"] == "here"


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_not_continued(
        tiny: Run, tmp_path: Path) -> None:
    common, spec = tiny["common"], tiny["spec"]
    keep = common.inflight_dir(tmp_path / "runs.jsonl", spec)
    stop_after_two_rounds(tiny, keep, **{"train.optimizer.lr": 0.5})

    row = common.run_one(spec, tiny["glue"], keep=keep)

    assert "resumed_after" not in row
    assert numbers(row) == numbers(tiny["straight"])


class Stopped(Exception):
    """The session that ran a run ended midway."""


@pytest.mark.slow
@pytest.mark.parametrize(("device", "continued"), [
    ("gpu", True), ("cpu", False)])
def test_a_run_continues_only_on_the_device_it_started_on(
        tiny: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        device: str, continued: bool) -> None:
    """A run stopped on one device and continued on another would
    repeat on neither, and its row would name only the second: it
    starts over instead."""
    common, spec = tiny["common"], tiny["spec"]
    keep = common.inflight_dir(tmp_path / "runs.jsonl", spec)

    def stopped_after_two_rounds(*_: Any) -> None:
        stop_after_two_rounds(tiny, keep)
        raise Stopped

    with monkeypatch.context() as patch:
        patch.setattr(common, "_run_in", stopped_after_two_rounds)
        with pytest.raises(Stopped):
            common.run_one(spec, tiny["glue"], keep=keep,
                           extra={"device": "gpu"})
    row = common.run_one(spec, tiny["glue"], keep=keep,
                         extra={"device": device})

    assert ("resumed_after" in row) is continued
    assert numbers(row) == numbers(tiny["straight"])
    assert row["device"] == device


def test_a_run_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    import fcntl

    common = load("_common")
    spec = common.RunSpec(task="sst2", method="rolora", clients=3, seed=0,
                          lr=1e-2)
    store = common.Store(tmp_path / "runs.jsonl")
    keep = common.inflight_dir(store.path, spec)
    keep.mkdir(parents=True)
    with open(keep / "lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(common.RunBusy, match="another process"):
            common.run_one(spec, tmp_path / "no-glue", keep=keep)
        common.ensure([spec], store, tmp_path / "no-glue")
    assert spec not in store and keep.exists()


def test_a_run_another_suite_stored_meanwhile_is_not_run_again(
        tmp_path: Path) -> None:
    """Two suites on one store: this one made its list before the other
    stored the run. Running it would fail here (no GLUE data)."""
    common = load("_common")
    spec = common.RunSpec(task="sst2", method="rolora", clients=3, seed=0,
                          lr=1e-2)
    mine = common.Store(tmp_path / "runs.jsonl")
    common.Store(mine.path).add({"key": spec.key, "primary_metric": "acc",
                                 "final": {"acc": 0.5}})

    common.ensure([spec], mine, tmp_path / "no-glue")

    assert mine.get(spec) == {"key": spec.key, "primary_metric": "acc",
                              "final": {"acc": 0.5}}
    assert len(mine.path.read_text().splitlines()) == 1
    assert not common.inflight_dir(mine.path, spec).exists()
