"""``compare --seeds`` (every method at each seed, mean ± sd) and
``compare --resume`` (a stopped comparison continues where it stopped),
on the tiny model."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from federatedscope_rolora.config import Config, ConfigError, build_config
from federatedscope_rolora.config import _flatten as flatten
from federatedscope_rolora.runners.compare import compare, parse_seeds
from federatedscope_rolora.runners.outputs import OutdirError, RunDirLock
from tests.conftest import rescale_a_weight, tiny_config_tree

pytestmark = pytest.mark.slow


def tiny(model: Path, glue: Path, out: Path, rounds: int = 2) -> Config:
    return build_config(flatten(tiny_config_tree(
        model, glue, out, federate={"total_round_num": rounds})))


def summary(run_dir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (run_dir / "summary.json").read_text(encoding="utf-8"))
    return data


def test_each_seed_runs_and_the_table_gives_mean_and_sd(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp")

    result = compare(cfg, ["rolora", "lora"], seeds=[1, 5], plots=False)

    for method in ("rolora", "lora"):
        finals = [summary(tmp_path / "cmp" / method / f"seed{s}")["final"]
                  for s in (1, 5)]
        accs = [f["acc"] for f in finals]  # type: ignore[index]
        res = result["methods"][method]
        assert res["final_per_seed"]["acc"] == accs
        assert res["final"]["acc"] == pytest.approx(statistics.mean(accs))
        assert res["final_sd"]["acc"] == pytest.approx(statistics.stdev(accs))
        assert sorted(res["seeds"]) == ["1", "5"]
    # different seeds, different runs: a seed that was not applied would
    # repeat one run twice
    runs = result["methods"]["lora"]["seeds"]
    assert runs["1"]["curve"] != runs["5"]["curve"]
    table = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    assert "seeds 1, 5: final scores as mean ± sd" in table
    lora = result["methods"]["lora"]
    assert (f"| lora | acc {lora['final']['acc']:.4f} ± "
            f"{lora['final_sd']['acc']:.4f} | ") in table
    # lora against rolora, seed by seed (the first method listed is the
    # reference)
    diffs = [a - b for a, b in zip(lora["final_per_seed"]["acc"],
                                   result["methods"]["rolora"]
                                   ["final_per_seed"]["acc"], strict=True)]
    paired = result["paired"]
    assert (paired["reference"], paired["metric"]) == ("rolora", "acc")
    assert paired["methods"]["lora"]["diff"] == pytest.approx(diffs)
    assert paired["methods"]["lora"]["mean"] == \
        pytest.approx(statistics.mean(diffs))
    assert paired["methods"]["lora"]["sd"] == \
        pytest.approx(statistics.stdev(diffs))
    assert paired["methods"]["lora"]["ahead"] == sum(d > 0 for d in diffs)
    assert (f"- lora: {statistics.mean(diffs):+.4f} ± "
            f"{statistics.stdev(diffs):.4f} (ahead at ") in table
    assert "rolora" not in paired["methods"]


def test_resume_reads_finished_runs_back_and_continues_the_rest(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    straight = compare(tiny(tiny_model_dir, tiny_glue_root,
                            tmp_path / "straight", rounds=3),
                       ["rolora", "lora"], plots=False)
    out = tmp_path / "stopped"
    compare(tiny(tiny_model_dir, tiny_glue_root, out, rounds=2),
            ["rolora", "lora"], plots=False)
    finished = (out / "rolora" / "metrics.jsonl").stat().st_mtime_ns

    with pytest.raises(OutdirError, match="already holds a run"):
        compare(tiny(tiny_model_dir, tiny_glue_root, out, rounds=3),
                ["rolora", "lora"], plots=False)
    again = compare(tiny(tiny_model_dir, tiny_glue_root, out, rounds=2),
                    ["rolora", "lora"], resume=True, plots=False)
    assert (out / "rolora" / "metrics.jsonl").stat().st_mtime_ns == finished
    longer = compare(tiny(tiny_model_dir, tiny_glue_root, out, rounds=3),
                     ["rolora", "lora"], resume=True, plots=False)

    assert again["methods"]["rolora"]["curve"] == \
        summary_curve(straight, "rolora", up_to=2)
    for method in ("rolora", "lora"):
        assert longer["methods"][method]["final"] == \
            straight["methods"][method]["final"]
        assert longer["methods"][method]["curve"] == \
            straight["methods"][method]["curve"]


def summary_curve(result: dict[str, object], method: str,
                  up_to: int) -> list[dict[str, object]]:
    curve = result["methods"][method]["curve"]  # type: ignore[index]
    return [p for p in curve if p["round"] <= up_to]


def test_one_seed_keeps_the_usual_layout_under_that_seed(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp")

    result = compare(cfg, ["lora"], seeds=[5], plots=False)

    saved = (tmp_path / "cmp" / "lora" / "config.yaml").read_text(
        encoding="utf-8")
    assert "seed: 5" in saved.splitlines()
    assert result["seeds"] == [5]
    assert "final_sd" not in result["methods"]["lora"]


def test_resume_does_not_read_back_a_member_another_process_writes(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """A finished member that a `run --resume` (more rounds) is
    extending was read back without its lock, half-written; compare
    now waits its turn like any writer, and reads it once it is free."""
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp")
    first = compare(cfg, ["rolora", "lora"], plots=False)
    lock = RunDirLock(tmp_path / "cmp" / "lora")
    lock.acquire()
    try:
        with pytest.raises(OutdirError, match=r"/cmp/lora' is in use"):
            compare(cfg, ["rolora", "lora"], resume=True, plots=False)
    finally:
        lock.release()

    again = compare(cfg, ["rolora", "lora"], resume=True, plots=False)
    assert again["methods"]["lora"]["final"] == \
        first["methods"]["lora"]["final"]


def test_a_seed_whose_split_cannot_be_dealt_stops_before_any_run(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """35 clients, Dirichlet 0.3 over 240 examples: seed 0 deals, seed 1
    leaves a client empty. The comparison ran seed 0's first method in
    full before it stopped at seed 1."""
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp").replace(
        federate__client_num=35, data__splitter="lda",
        data__splitter_args=[{"alpha": 0.3}])

    with pytest.raises(ConfigError, match=r"cannot split 240 train "
                       r"examples over federate.client_num=35 clients"):
        compare(cfg, ["rolora", "lora"], seeds=[0, 1], plots=False)
    assert not (tmp_path / "cmp").exists()


def _no_wall_seconds(run_dir: Path) -> None:
    data = summary(run_dir)
    del data["wall_seconds"]
    (run_dir / "summary.json").write_text(json.dumps(data))


def _half_a_line_more(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"round": 3, "pha')


@pytest.mark.parametrize("damage", [
    lambda d: (d / "summary.json").write_text("{not json"),
    _no_wall_seconds,        # a KeyError after every run had finished
    _half_a_line_more,       # a JSONDecodeError, likewise
])
def test_resume_runs_again_over_a_damaged_summary(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        damage: Any) -> None:
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp")
    first = compare(cfg, ["lora"], plots=False)
    damage(tmp_path / "cmp" / "lora")

    again = compare(cfg, ["lora"], resume=True, plots=False)

    assert again["methods"]["lora"]["final"] == \
        first["methods"]["lora"]["final"]
    assert summary(tmp_path / "cmp" / "lora")["rounds"] == 2


@pytest.mark.parametrize("text", ["", "0,x", "0,0", "-1"])
def test_bad_seed_lists_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_seeds(text)


def test_a_seed_added_on_resume_with_more_rounds_is_averaged(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Seeds 1 and 2 ran 1 round (evaluated: it was the last); resumed
    to 3 rounds with seed 3 added, at eval.freq 2 they evaluate rounds
    1, 2, 3 and seed 3 rounds 2, 3. The mean curve is over the rounds
    every seed evaluated (it used to stop with a ValueError from zip,
    after every run had finished, and write no comparison)."""
    def config(rounds: int) -> Config:
        return build_config(flatten(tiny_config_tree(
            tiny_model_dir, tiny_glue_root, tmp_path / "cmp",
            federate={"total_round_num": rounds}, eval={"freq": 2})))

    compare(config(1), ["lora"], seeds=[1, 2], plots=False)

    result = compare(config(3), ["lora"], seeds=[1, 2, 3], resume=True,
                     plots=False)

    lora = result["methods"]["lora"]
    runs = [lora["seeds"][s]["curve"] for s in ("1", "2", "3")]
    assert [[p["round"] for p in c] for c in runs] == \
        [[1, 2, 3], [1, 2, 3], [2, 3]]
    assert [p["round"] for p in lora["curve"]] == [2, 3]
    for i, point in enumerate(lora["curve"]):
        values = [c[-2 + i]["metric"] for c in runs]
        assert point["metric"] == pytest.approx(statistics.fmean(values))
        assert (point["metric_min"], point["metric_max"]) == \
            (min(values), max(values))
    assert lora["final"]["acc"] == pytest.approx(statistics.fmean(
        summary(tmp_path / "cmp" / "lora" / f"seed{s}")["final"]["acc"]
        for s in (1, 2, 3)))
    assert (tmp_path / "cmp" / "comparison.json").is_file()


def test_every_run_is_checked_before_any_starts(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """A comparison of lora, resumed with rolora listed first and another
    learning rate: lora cannot continue, and rolora used to run in full
    under the new rate before that was found out (the same for a run in
    the way without --resume)."""
    from federatedscope_rolora.runners.checkpoint import CheckpointError

    def config(lr: float) -> Config:
        return build_config(flatten(tiny_config_tree(
            tiny_model_dir, tiny_glue_root, tmp_path / "cmp",
            federate={"total_round_num": 2},
            train={"optimizer": {"type": "AdamW", "lr": lr}})))

    compare(config(0.01), ["lora"], plots=False)
    before = sorted(p.name for p in (tmp_path / "cmp").iterdir())

    with pytest.raises(CheckpointError, match=r"cmp/lora': the config "
                       r"differs from the run's in train.optimizer.lr"):
        compare(config(0.02), ["rolora", "lora"], resume=True, plots=False)
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == before
    with pytest.raises(OutdirError, match=r"cmp/lora' already holds a run"):
        compare(config(0.01), ["rolora", "lora"], plots=False)
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == before


def _spoil_lora_metrics(out: Path, glue: Path) -> None:
    path = out / "lora" / "metrics.jsonl"
    path.write_text("not json\n" + path.read_text(encoding="utf-8"),
                    encoding="utf-8")


def _edit_test_rows(out: Path, glue: Path) -> None:
    path = glue / "SST-2" / "dev.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n",
                    encoding="utf-8")


@pytest.mark.parametrize(("spoil", "named"), [
    (_spoil_lora_metrics, r"lora/metrics.jsonl:1: not a metrics record"),
    (_edit_test_rows, r"its test data \(sha256 .*\) differ"),
])
def test_a_run_that_cannot_continue_stops_the_comparison_before_any_runs(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path,
        spoil: Any, named: str) -> None:
    """What a resume checks after the config (the metrics lines it keeps,
    the data it ran on) was found only when that run's turn came: rolora
    trained every round first, then the comparison stopped."""
    import shutil

    from federatedscope_rolora.runners.checkpoint import CheckpointError

    glue = tmp_path / "glue"
    shutil.copytree(tiny_glue_root, glue)
    cfg = tiny(tiny_model_dir, glue, tmp_path / "cmp")
    compare(cfg, ["lora"], plots=False)
    spoil(tmp_path / "cmp", glue)

    with pytest.raises((OutdirError, CheckpointError), match=named):
        compare(cfg, ["rolora", "lora"], resume=True, plots=False)

    assert not (tmp_path / "cmp" / "rolora").exists()


def test_a_finished_run_on_other_model_weights_stops_the_comparison(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """The model's files changed after lora finished (one weight scaled,
    same shapes, same path): rolora trained on the new weights and lora,
    read back, stood beside it in one table, trained on the old ones."""
    import shutil

    from federatedscope_rolora.runners.checkpoint import CheckpointError

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = tiny(model, tiny_glue_root, tmp_path / "cmp")
    compare(cfg, ["lora"], plots=False)
    original = rescale_a_weight(model)

    with pytest.raises(CheckpointError, match=r"cmp/lora': the model built "
                       r"from model.type .* differs from the one it ran on "
                       r"to round 2"):
        compare(cfg, ["rolora", "lora"], resume=True, plots=False)
    assert not (tmp_path / "cmp" / "rolora").exists()

    (model / "model.safetensors").write_bytes(original)
    result = compare(cfg, ["rolora", "lora"], resume=True, plots=False)
    assert set(result["methods"]) == {"rolora", "lora"}


def test_resume_uses_the_runs_of_a_comparison_with_fewer_or_more_seeds(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """One seed writes ``lora/``, several ``lora/seed<s>``: going from
    one to several with --resume (or back) reads the run of that seed
    where it is instead of running it again under the other layout."""
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp")
    one = compare(cfg, ["lora"], seeds=[1], plots=False)
    lora = tmp_path / "cmp" / "lora"
    stamp = (lora / "summary.json").stat().st_mtime_ns

    several = compare(cfg, ["lora"], seeds=[1, 2], resume=True, plots=False)

    assert not (lora / "seed1").exists()
    assert (lora / "summary.json").stat().st_mtime_ns == stamp
    assert (lora / "seed2" / "summary.json").is_file()
    assert several["methods"]["lora"]["seeds"]["1"]["final"] == \
        one["methods"]["lora"]["final"]

    # and back, where the several-seed comparison stopped before its
    # table (with the table there, a subset is refused: see below): seed
    # 2 alone is read from lora/seed2, not run in lora/ (which holds seed
    # 1's run: another seed is not taken for it)
    (tmp_path / "cmp" / "comparison.json").unlink()
    stamp2 = (lora / "seed2" / "summary.json").stat().st_mtime_ns
    back = compare(cfg, ["lora"], seeds=[2], resume=True, plots=False)

    assert (lora / "seed2" / "summary.json").stat().st_mtime_ns == stamp2
    assert back["methods"]["lora"]["final"] == \
        several["methods"]["lora"]["seeds"]["2"]["final"]
    assert (lora / "summary.json").stat().st_mtime_ns == stamp


def test_a_new_comparison_into_an_earlier_ones_outdir_is_refused(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """Other methods into the same outdir used to run and replace the
    earlier table; --resume still continues or extends it."""
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp", rounds=1)
    compare(cfg, ["lora"], plots=False)
    table = tmp_path / "cmp" / "comparison.md"
    before = table.read_text(encoding="utf-8")

    with pytest.raises(OutdirError, match=r"holds an earlier comparison "
                       r"of lora at seeds 1 \(comparison.json\)"):
        compare(cfg, ["ffa_lora"], plots=False)

    assert table.read_text(encoding="utf-8") == before
    assert not (tmp_path / "cmp" / "ffa_lora").exists()
    extended = compare(cfg, ["lora", "ffa_lora"], resume=True, plots=False)
    assert sorted(extended["methods"]) == ["ffa_lora", "lora"]


def test_resume_with_fewer_methods_or_seeds_keeps_the_earlier_table(
        tiny_model_dir: Path, tiny_glue_root: Path, tmp_path: Path) -> None:
    """--resume with a subset replaced the table (and plots) of lora and
    ffa_lora at seeds 1 and 2 by one of lora at seed 1."""
    cfg = tiny(tiny_model_dir, tiny_glue_root, tmp_path / "cmp", rounds=1)
    compare(cfg, ["lora", "ffa_lora"], seeds=[1, 2])
    out = tmp_path / "cmp"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert "accuracy_vs_round.png" in before

    for methods, seeds, left in ((["lora"], [1, 2], "ffa_lora"),
                                 (["lora", "ffa_lora"], [2], "seed 1")):
        with pytest.raises(OutdirError, match=r"holds an earlier comparison "
                           r"of lora, ffa_lora at seeds 1, 2; --resume "
                           rf"continues or extends it, and this one leaves "
                           rf"out {left}"):
            compare(cfg, methods, seeds=seeds, resume=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()
            if p.is_file()} == before

    # the same comparison without plots: the earlier ones are not left
    # to stand beside a table they no longer draw
    compare(cfg, ["lora", "ffa_lora", "rolora"], seeds=[1, 2], resume=True,
            plots=False)
    assert not (out / "accuracy_vs_round.png").exists()
    assert not (out / "accuracy_vs_upload.png").exists()
