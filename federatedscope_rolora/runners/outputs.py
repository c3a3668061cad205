"""What a run writes to its outdir (DESIGN.md §6)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federatedscope_rolora.config import Config, dump_config

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"


class OutdirError(ValueError):
    """The outdir cannot take this run."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file and rename, so a reader never sees half a
    file and a crash never destroys the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


class RunWriter:
    """Appends one metrics line per round; writes config and summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @classmethod
    def create(cls, cfg: Config) -> RunWriter:
        run_dir = cfg.run_dir
        if (run_dir / METRICS_FILE).exists():
            raise OutdirError(f"outdir {str(run_dir)!r} already holds a run "
                              f"({METRICS_FILE}); choose another outdir")
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / CONFIG_FILE)
        return cls(run_dir)

    def append_round(self, record: Mapping[str, Any]) -> None:
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.run_dir / SUMMARY_FILE, summary)

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / ADAPTER_DIR


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round records of a run, in order."""
    path = run_dir / METRICS_FILE
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
