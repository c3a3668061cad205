"""``federatedscope-rolora run | compare``: argument parsing, progress,
exit codes (0 done, 1 bug, 2 bad input, 3 a round got fewer than
``rolora.min_received`` updates, 130 interrupted).

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
from typing import Any, TextIO

from federatedscope_rolora.config import ConfigError, load_config
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
                "only in outdir, rounds, threads, eval.freq, fault "
                "tolerance and the prefix cache's memory limit")
        if name == "compare":
            cmd.add_argument("--methods", default="rolora,lora,ffa_lora",
                             help="comma-separated methods, or all "
                             "(rolora, lora, ffa_lora, fedex_lora, "
                             "flexlora, fedsa_lora; default: "
                             "%(default)s)")
            cmd.add_argument("--no-plots", action="store_true",
                             help="skip the PNG plots")
        cmd.add_argument("opts", nargs=argparse.REMAINDER,
                         metavar="KEY VALUE",
                         help="config overrides, e.g. federate.client_num "
                         "20")
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

    opts, resume = list(args.opts), args.resume
    # ``--resume KEY VALUE``: argparse took the first override's key for
    # the optional OUTDIR.
    if resume and resume in SCHEMA and not Path(resume).is_dir():
        opts, resume = [resume, *opts], ""
    cfg = load_config(args.cfg, opts)
    if resume:
        cfg = cfg.replace(outdir=resume, expname="")
    faults = parse_faults(os.environ.get(FAULTS_ENV, ""))
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
    )

    cfg = load_config(args.cfg, args.opts)
    methods = parse_methods(args.methods)
    total = cfg["federate.total_round_num"]
    result = compare(cfg, methods,
                     on_round=lambda m: Progress(m, total),
                     plots=not args.no_plots)
    print(markdown_table(result))
    print(f"\noutputs in {cfg.run_dir}")
    return 0


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

    bad_input = (ConfigError, OutdirError, CheckpointError, SetupError)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
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
