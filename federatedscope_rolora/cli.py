"""``federatedscope-rolora run | compare | eval``: argument parsing,
progress, exit codes (0 done, 1 bug, 2 bad input, 3 a round got fewer
than ``rolora.min_received`` updates, 130 interrupted).

For its own tests only, ``run`` reads client faults to inject from the
environment variable ``ROLORA_TEST_FAULTS`` (``ROUND:CLIENT:KIND,...``,
see ``runners/simulation.py``); it is not a user setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from federatedscope_rolora.config import Config, ConfigError, load_config
from federatedscope_rolora.schema import SCHEMA

EXIT_BAD_INPUT = 2
EXIT_ROUND_FAILED = 3
log = logging.getLogger("federatedscope_rolora")


class Progress:
    """A one-line bar on a terminal, a log line per round otherwise."""

    def __init__(self, label: str, total: int,
                 stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, record: dict[str, Any]) -> None:
        t = record["round"]
        parts = [f"[{self.label}] round {t}/{self.total}"]
        if record["phase"]:
            parts.append(f"phase {record['phase']}")
        if record["train_loss"] is not None:
            parts.append(f"loss {record['train_loss']:.4f}")
        for name, value in record.get("eval", {}).items():
            parts.append(f"test {name} {value:.4f}")
        personal = record.get("eval_per_client", {}).get(
            "example_weighted", {})
        for name, value in personal.items():
            parts.append(f"per-client {name} {value:.4f}")
        if record.get("aggregation_gap") is not None:
            parts.append(f"gap {record['aggregation_gap']:.2e}")
        up = sum(record["bytes"]["up"].values())
        parts.append(f"up {up / 1e3:.1f} KB")
        if record["rejected"]:
            parts.append(f"left out {sorted(record['rejected'])}")
        text = ", ".join(parts)
        if self.tty:
            done = int(20 * t / self.total)
            bar = "#" * done + "." * (20 - done)
            end = "\n" if t == self.total else ""
            self.stream.write(f"\r{bar} {text}\033[K{end}")
            self.stream.flush()
        else:
            log.info(text)


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line like every other bad
    input (argparse prints the whole usage first), exit code 2."""

    def error(self, message: str) -> NoReturn:
        # the trailing overrides are optional; argparse lists them
        message = message.replace(", KEY VALUE", "")
        _error_line(ValueError(f"{self.prog}: {message} (see "
                               f"{self.prog} --help)"))
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="federatedscope-rolora",
        description="Federated LoRA fine-tuning: RoLoRA, LoRA, FFA-LoRA, "
        "FedEx-LoRA, FlexLoRA, FedSA-LoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run one experiment"),
                       ("compare", "run methods head to head")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--cfg", required=True, metavar="FILE",
                         help="YAML config (FederatedScope schema)")
        if name == "run":
            cmd.add_argument(
                "--resume", nargs="?", const="", default=None,
                metavar="OUTDIR",
                help="continue the run in OUTDIR (default: the config's "
                "outdir) from its last checkpoint; the config may change "
                "only in where it runs and writes (outdir, expname, "
                "verbose, use_gpu, device, threads), rounds, eval.freq, "
                "fault tolerance and the prefix cache's memory limit")
        if name == "compare":
            cmd.add_argument("--methods", default="rolora,lora,ffa_lora",
                             help="comma-separated methods, or all "
                             "(rolora, lora, ffa_lora, fedex_lora, "
                             "flexlora, fedsa_lora; default: "
                             "%(default)s)")
            cmd.add_argument("--seeds", default=None, metavar="S,S,...",
                             help="run every method at each seed (e.g. "
                             "0,1,2) and report mean ± sd; default: the "
                             "config's seed")
            cmd.add_argument("--resume", action="store_true",
                             help="continue a stopped comparison in the "
                             "same outdir: finished runs are read back, "
                             "stopped ones continue from their checkpoint")
            cmd.add_argument("--no-plots", action="store_true",
                             help="skip the PNG plots")
        cmd.add_argument("opts", nargs=argparse.REMAINDER,
                         metavar="KEY VALUE",
                         help="config overrides, e.g. federate.client_num "
                         "20")
    text = ("score a finished run's model from its files alone (base "
            "model, adapter/, FedEx-LoRA's residual, FedSA-LoRA's "
            "per-client B) on the test rows the run was scored on, beside "
            "the run's recorded final score")
    cmd = sub.add_parser("eval", help="score a finished run's model",
                         description=text)
    cmd.add_argument("run_dir", metavar="RUN_DIR",
                     help="a run's outdir (holding adapter/)")
    cmd.add_argument("--cfg", metavar="FILE", default=None,
                     help="the config the run ran with (default: "
                     "RUN_DIR/config.yaml, or a FederatedScope plugin "
                     "run's RUN_DIR/rolora_config.yaml)")
    who = cmd.add_mutually_exclusive_group()
    who.add_argument("--per-client", action="store_true",
                     help="every client's model on its own test share, "
                     "as the run's per-client evaluation")
    who.add_argument("--client", type=int, metavar="ID",
                     help="one client's model on its own test share")
    cmd.add_argument("--json", action="store_true",
                     help="print the scores as JSON")
    cmd.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                     help="config overrides, e.g. data.root on another "
                     "machine")
    text = ("write a finished run's model as one plain transformers "
            "checkpoint (the adapter, FedEx-LoRA's residual and, for "
            "FedSA-LoRA, one client's B merged into the weights) that "
            "AutoModelForSequenceClassification.from_pretrained loads "
            "without this package or PEFT; the written copy is loaded back "
            "and checked against the run's model on its test rows")
    cmd = sub.add_parser("export", help="write a run's model as a plain "
                         "transformers checkpoint", description=text)
    cmd.add_argument("run_dir", metavar="RUN_DIR",
                     help="a run's outdir (holding adapter/)")
    cmd.add_argument("out_dir", metavar="OUT_DIR",
                     help="a new (or empty) directory to write")
    cmd.add_argument("--cfg", metavar="FILE", default=None,
                     help="the config the run ran with (default: "
                     "RUN_DIR/config.yaml, or a FederatedScope plugin "
                     "run's RUN_DIR/rolora_config.yaml)")
    cmd.add_argument("--client", type=int, metavar="ID",
                     help="that client's model (needed for fedsa_lora, "
                     "which keeps one B per client)")
    cmd.add_argument("--check-rows", type=int, default=16, metavar="N",
                     help="test rows the written copy is checked on "
                     "(default %(default)s; 0 skips the check, which needs "
                     "the run's data)")
    cmd.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                     help="config overrides, e.g. data.root on another "
                     "machine")
    sub.add_parser(
        "fs-main", add_help=False,
        help="run FederatedScope's main with the plugin registered, for "
        "setups where the import hook cannot load (needs FederatedScope)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from federatedscope_rolora.runners.faults import (
        FAULTS_ENV,
        drift_hook,
        fault_hook,
        parse_faults,
    )
    from federatedscope_rolora.runners.simulation import run

    _options_first(args, "before the KEY VALUE overrides")
    opts, resume = list(args.opts), args.resume
    # ``--resume KEY VALUE``: argparse took the first override's key for
    # the optional OUTDIR.
    if resume and resume in SCHEMA and not Path(resume).is_dir():
        opts, resume = [resume, *opts], ""
    cfg = load_config(args.cfg, opts)
    if resume:
        cfg = cfg.replace(outdir=resume, expname="")
    faults = parse_faults(os.environ.get(FAULTS_ENV, ""),
                          cfg["federate.client_num"])
    progress = Progress(cfg["federate.method"],
                        cfg["federate.total_round_num"])
    summary = run(cfg, on_round=progress,
                  update_hook=fault_hook(faults) if faults else None,
                  state_hook=drift_hook(faults) if faults else None,
                  resume=resume is not None)
    metric = summary["primary_metric"]
    print(f"{summary['method']} on {summary['task']}: final {metric} "
          f"{summary['final'][metric]:.4f}, best "
          f"{summary['best'][metric]:.4f} (round "
          f"{summary['best']['round']}), uploaded "
          f"{summary['bytes_up_total'] / 1e6:.3f} MB; outputs in "
          f"{cfg.run_dir}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from federatedscope_rolora.runners.compare import (
        compare,
        markdown_table,
        parse_methods,
        parse_seeds,
    )

    _options_first(args, "before the KEY VALUE overrides")
    cfg = load_config(args.cfg, args.opts)
    methods = parse_methods(args.methods)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    total = cfg["federate.total_round_num"]
    result = compare(cfg, methods, seeds=seeds, resume=args.resume,
                     on_round=lambda m: Progress(m, total),
                     plots=not args.no_plots)
    print(markdown_table(result))
    print(f"\noutputs in {cfg.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json

    from federatedscope_rolora.runners.trained import score_run

    run_dir = Path(args.run_dir)
    cfg = _trained_config(args, "RUN_DIR")
    result = score_run(run_dir, cfg, per_client=args.per_client,
                       client=args.client)
    changed = _scoring_changes(run_dir, cfg)
    if changed:
        print("federatedscope-rolora: note: scored under other values "
              f"than the run's config.yaml: {'; '.join(changed)}; the "
              "run's figures beside are of its own", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    head = f"{cfg['federate.method']} on {cfg.task}"
    # a summary edited or damaged into other shapes is no figure to show
    recorded = result["recorded"] if isinstance(result["recorded"], dict) \
        else {}
    if result["same_rows"] is False:
        print("federatedscope-rolora: note: these test rows differ from "
              "the ones the run was scored on (its summary's "
              "data_digest): the data files changed, are read from "
              "another data.root, or the config draws other rows, so its "
              "figures are not comparable", file=sys.stderr)
    if "eval_per_client" in result:
        means = result["eval_per_client"]
        scores = ", ".join(
            f"{name} {means['example_weighted'][name]:.4f} / "
            f"{means['client_mean'][name]:.4f}"
            + _recorded(recorded.get("example_weighted", {}), name,
                        recorded.get("client_mean", {}))
            for name in means["example_weighted"])
        print(f"{head}, each client's model on its own test share "
              f"({means['clients']} clients, {means['examples']} rows; "
              f"weighted by examples / plain mean): {scores}")
        return 0
    scores = ", ".join(f"{name} {value:.4f}" + _recorded(recorded, name)
                       for name, value in result["eval"].items())
    if "client" in result:
        print(f"{head}, client {result['client']}'s model on its "
              f"{result['rows']} test rows: {scores} (the run records "
              "only the means over clients: --per-client)")
    else:
        print(f"{head}, global adapter on {result['rows']} test rows: "
              f"{scores}")
    return 0


def _options_first(args: argparse.Namespace, where: str,
                   places: str = "") -> None:
    """ConfigError if an option (``--seeds``) stands among the trailing
    ``KEY VALUE`` overrides, where it would be read as a config key."""
    if args.opts[:1] == ["--"]:   # the usual end-of-options marker
        args.opts = args.opts[1:]
    flags = [o for o in args.opts[::2] if o.startswith("-")]
    if flags:
        usage = " ".join(filter(None, (
            f"federatedscope-rolora {args.command} [OPTIONS]", places,
            "[KEY VALUE ...]")))
        raise ConfigError(f"{flags[0]} stands among the KEY VALUE "
                          f"overrides: options go {where} ({usage}; "
                          f"federatedscope-rolora {args.command} --help "
                          "lists them)")


# Keys whose value changes what eval scores (the model's inputs, the
# test rows, the clients' shares), beside the method, which
# runners/trained.py compares itself.
SCORING_KEYS = ("seed", "data.type", "model.type", "llm.tok_len",
                "llm.adapter.args", "rolora.eval_samples",
                "rolora.train_samples", "rolora.holdout",
                "federate.client_num", "data.splitter",
                "data.splitter_args")


def _scoring_changes(run_dir: Path, cfg: Config) -> list[str]:
    """``KEY (X in the run, Y here)`` for each of ``SCORING_KEYS`` where
    ``cfg`` (the eval's ``--cfg`` and overrides) differs from the run's
    own config (``run_config_file``); none if that cannot be read."""
    from federatedscope_rolora.runners.checkpoint import same_adapter
    from federatedscope_rolora.runners.outputs import run_config_file

    try:
        ran = load_config(run_config_file(run_dir), ignore=("distribute",))
    except (ConfigError, OSError):
        return []
    return [f"{k} ({ran[k]!r} in the run, {cfg[k]!r} here)"
            for k in SCORING_KEYS
            if _spelt(k, ran[k]) != _spelt(k, cfg[k])
            and not same_adapter(k, ran[k], cfg[k])]


def _spelt(key: str, value: object) -> object:
    """One spelling of a value written several ways: ``sst2`` and
    ``sst2@glue``, a model with or without ``@huggingface_seqcls``."""
    from federatedscope_rolora.schema import model_path

    if key == "data.type":
        task, _, kind = str(value).partition("@")
        return task.lower(), (kind or "glue").lower()
    if key == "model.type":
        return model_path(str(value))
    return value


def _trained_config(args: argparse.Namespace, places: str) -> Config:
    """The config of the finished run ``args.run_dir`` (``--cfg``, else
    its own, ``run_config_file``) with the trailing overrides;
    ``places``: the command's positional arguments, for the usage
    line."""
    from federatedscope_rolora.runners.outputs import run_config_file

    _options_first(args, f"before {places.split()[0]}", places)
    # A distributed run's YAML names where each process ran
    # (``distribute:``), which scoring its files does not need.
    return load_config(args.cfg or run_config_file(Path(args.run_dir)),
                       args.opts, ignore=("distribute",))


def _export(args: argparse.Namespace) -> int:
    from federatedscope_rolora.runners.trained import export_model

    cfg = _trained_config(args, "RUN_DIR OUT_DIR")
    record = export_model(Path(args.run_dir), cfg, Path(args.out_dir),
                          client=args.client, check_rows=args.check_rows)
    who = f", client {args.client}'s model" if args.client else ""
    check = record.get("check")
    checked = (f"; loaded back by transformers alone, its logits on "
               f"{check['rows']} test rows match the run's model to "
               f"{check['max_abs_logit_diff']:.1e}" if check else
               "; not checked (--check-rows 0)")
    print(f"{record['method']} on {record['task']}{who}: merged "
          f"checkpoint written to {args.out_dir}{checked}")
    return 0


def _recorded(recorded: Any, name: str, plain: Any = None) -> str:
    """' (run: X)' (per client: ' (run: X / Y)') from a summary's
    final scores, or '' when the run recorded none."""
    value = recorded.get(name) if isinstance(recorded, dict) else None
    if not isinstance(value, (int, float)):
        return ""
    if plain is None:
        return f" (run: {value:.4f})"
    other = plain.get(name) if isinstance(plain, dict) else None
    if not isinstance(other, (int, float)):
        return ""
    return f" (run: {value:.4f} / {other:.4f})"


def _error_line(err: Exception) -> None:
    """One line, even when a library's message spans several."""
    text = " ".join(str(err).split())
    print(f"federatedscope-rolora: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    if tokens[:1] == ["fs-main"]:
        # FederatedScope parses its own --cfg, --client_cfg and overrides.
        from federatedscope_rolora.fs.launch import main as fs_main
        return fs_main(tokens[1:])
    from federatedscope_rolora.runners.outputs import OutdirError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    from federatedscope_rolora.core.server import RoundFailed
    from federatedscope_rolora.runners.checkpoint import CheckpointError
    from federatedscope_rolora.runners.simulation import SetupError
    from federatedscope_rolora.runners.trained import TrainedError
    from federatedscope_rolora.training.glue import DataError
    from federatedscope_rolora.training.models import ModelError

    bad_input = (ConfigError, OutdirError, CheckpointError, SetupError,
                 DataError, ModelError, TrainedError)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "export":
            return _export(args)
    except bad_input as err:
        _error_line(err)
        return EXIT_BAD_INPUT
    except RoundFailed as err:
        _error_line(err)
        return EXIT_ROUND_FAILED
    except KeyboardInterrupt:
        print("federatedscope-rolora: interrupted", file=sys.stderr)
        return 130
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
