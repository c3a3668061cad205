"""A checkpoint after every round, and the checks that decide whether a
run may resume from it.

One file, ``checkpoint/state.safetensors``, holds everything a run needs
to go on as if it had never stopped: the server's adapter and versions,
every client's adapter (FedSA-LoRA's own B among it), FedEx-LoRA's
residual totals and last increment, the round and its phase, the
random-number generators' states, how many metrics lines belong to
it, and the sha256 of the train and test examples it ran on (a resume
over edited data files is refused). Tensors are
safetensors; the rest is JSON in the file's metadata, so resuming never
unpickles anything. The file is written under a temporary name and
renamed over the previous one, so a kill at any moment leaves one whole
checkpoint, old or new. Participation and local seeds are pure functions
of (seed, round, client) (core/sampling.py), so the sampler has no state
to keep; the generators' states are kept all the same.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from federatedscope_rolora.config import (
    Config,
    ConfigError,
    load_config,
)
from federatedscope_rolora.runners.outputs import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    replace_durably,
    temporary_path,
)
from federatedscope_rolora.schema import SCHEMA
from federatedscope_rolora.training.models import LoraSpec

STATE_FILE = "state.safetensors"
FORMAT = 1
_META = "rolora_checkpoint"

# Keys that may differ between a checkpoint and the config a run resumes
# under: where outputs go, the machine, how far to run, what to record,
# and the fault tolerance a user may relax to get past a failed round.
# Everything else decides the numbers, so a change is refused.
MAY_CHANGE = frozenset({
    "outdir", "expname", "verbose", "use_gpu", "device", "rolora.threads",
    "federate.total_round_num", "eval.freq", "rolora.min_received",
    "rolora.client_deadline_s", "rolora.prefix_cache_mb",
})


class CheckpointError(ValueError):
    """A run cannot resume from what its outdir holds; nothing was
    written."""


@dataclass
class Checkpoint:
    """The state of a run after round ``round_idx`` (0: no round yet)."""

    round_idx: int
    phase: str | None
    config: dict[str, Any]
    server: dict[str, Any]                     # AdapterServer.state_dict()
    clients: dict[int, dict[str, torch.Tensor]]
    rng: dict[str, Any]
    metrics_lines: int
    wall_seconds: float
    # sha256 of the run's train and test examples (setup.data_digest);
    # empty in a checkpoint written before digests were kept
    data: dict[str, str] = field(default_factory=dict)
    # setup.model_fingerprint of the model the run built; empty in a
    # checkpoint written before it was kept
    model: str = ""


def capture_rng() -> dict[str, Any]:
    """torch's, Python's and numpy's global generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "python": [version, list(internal), gauss_next],
            "numpy": [name, np.asarray(keys).tolist(), pos, has_gauss,
                      cached]}


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Put the generators back as ``capture_rng`` found them;
    CheckpointError if a saved state is not one (a damaged file)."""
    try:
        torch.set_rng_state(rng["torch"])
        version, internal, gauss_next = rng["python"]
        random.setstate((version, tuple(internal), gauss_next))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos,
                             has_gauss, cached))
    except (KeyError, IndexError, TypeError, ValueError,
            RuntimeError) as err:
        raise CheckpointError(f"checkpoint: its random generator states "
                              f"cannot be restored ({type(err).__name__}: "
                              f"{err})") from None


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / STATE_FILE


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON, so values compare alike."""
    loaded: dict[str, Any] = json.loads(json.dumps(dict(config)))
    return loaded


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically: temporary file, fsync, rename."""
    tensors = {f"server/{k}": v.contiguous()
               for k, v in ckpt.server["state"].items()}
    for client, state in ckpt.clients.items():
        tensors.update({f"client/{client}/{k}": v.contiguous()
                        for k, v in state.items()})
    residual = ckpt.server.get("residual")
    if residual is not None:  # FedEx-LoRA
        tensors.update({f"residual/{k}": v.contiguous()
                        for k, v in residual["total"].items()})
        tensors.update({f"residual_last/{k}": v.contiguous()
                        for k, v in residual["last"].items()})
        for j, entry in enumerate(residual["history"]):
            tensors.update({f"residual_history/{j}/{k}": v.contiguous()
                            for k, v in entry["forms"].items()})
    tensors["rng/torch"] = ckpt.rng["torch"]
    meta = {
        "format": FORMAT, "round": ckpt.round_idx, "phase": ckpt.phase,
        "config": _jsonable(ckpt.config),
        "version": ckpt.server["version"],
        "client_versions": {str(c): v for c, v in
                            ckpt.server["client_versions"].items()},
        "aggregated_round": ckpt.server["aggregated_round"],
        "residual": None if residual is None else {
            "version": residual["version"],
            "previous": residual["previous"],
            "history": [[e["previous"], e["version"]]
                        for e in residual["history"]]},
        "clients": sorted(ckpt.clients),
        "rng": {"python": ckpt.rng["python"], "numpy": ckpt.rng["numpy"]},
        "metrics_lines": ckpt.metrics_lines,
        "wall_seconds": ckpt.wall_seconds,
        "data": ckpt.data,
        "model": ckpt.model,
    }
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    save_file(tensors, str(tmp), metadata={_META: json.dumps(meta)})
    replace_durably(tmp, path)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, None if there is none;
    CheckpointError naming the file if it cannot be read."""
    path = checkpoint_path(run_dir)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[_META])
        return _from_parts(meta, load_file(str(path)))
    except (SafetensorError, OSError, KeyError, TypeError,
            ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read "
                              f"({type(err).__name__}: {err})") from err


def _from_parts(meta: dict[str, Any], tensors: dict[str, torch.Tensor]
                ) -> Checkpoint:
    if meta["format"] != FORMAT:
        raise ValueError(f"format {meta['format']!r}, expected {FORMAT}")
    if not isinstance(meta["config"], dict) or \
            not isinstance(meta["rng"], dict):
        raise ValueError("its config or random states are not mappings")
    server: dict[str, torch.Tensor] = {}
    residual: dict[str, dict[str, torch.Tensor]] = {"residual": {},
                                                    "residual_last": {}}
    clients: dict[int, dict[str, torch.Tensor]] = {
        int(c): {} for c in meta["clients"]}
    history: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        if kind == "server":
            server[rest] = tensor
        elif kind in residual:
            residual[kind][rest] = tensor
        elif kind == "client":
            client, _, key = rest.partition("/")
            clients[int(client)][key] = tensor
        elif kind == "residual_history":
            step, _, key = rest.partition("/")
            history.setdefault(int(step), {})[key] = tensor
    saved_server: dict[str, Any] = {
        "state": server, "version": meta["version"],
        "client_versions": meta["client_versions"],
        "aggregated_round": meta["aggregated_round"]}
    if meta.get("residual") is not None:
        saved_server["residual"] = {
            "total": residual["residual"],
            "last": residual["residual_last"], **meta["residual"],
            "history": [{"previous": before, "version": after,
                         "forms": history.get(j, {})}
                        for j, (before, after) in enumerate(
                            meta["residual"].get("history") or [])]}
    return Checkpoint(
        round_idx=int(meta["round"]), phase=meta["phase"],
        config=meta["config"],
        server=saved_server,
        clients=clients,
        rng={"torch": tensors["rng/torch"], **meta["rng"]},
        metrics_lines=int(meta["metrics_lines"]),
        wall_seconds=float(meta["wall_seconds"]),
        data=dict(meta.get("data") or {}),
        model=str(meta.get("model") or ""),
    )


def config_differences(saved: Mapping[str, Any], cfg: Mapping[str, Any]
                       ) -> list[str]:
    """'key: A in the checkpoint, B now' for each key that matters."""
    now = _jsonable(cfg)
    absent = "<absent>"
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in MAY_CHANGE:
            continue
        # A key newer than the checkpoint: its run had the default.
        default = SCHEMA[key].default if key in SCHEMA else absent
        before, after = saved.get(key, default), now.get(key, absent)
        if before != after and not same_adapter(key, before, after):
            out.append(f"{key}: {before!r} in the checkpoint, {after!r} "
                       "now")
    return out


def data_differences(ckpt: Checkpoint, digests: Mapping[str, str]
                     ) -> list[str]:
    """Which of the run's data ('train', 'test') differ from what its
    checkpoint was trained and scored on; none for a checkpoint older
    than digests."""
    return [f"{name} data (sha256 {ckpt.data[name][:12]}... in the "
            f"checkpoint, {digests.get(name, '<none>')[:12]}... now)"
            for name in sorted(ckpt.data)
            if ckpt.data[name] != digests.get(name)]


def same_adapter(key: str, before: Any, after: Any) -> bool:
    """Whether two values of ``llm.adapter.args`` describe the same
    adapter: one spelling a setting out at its default (``lora_dropout:
    0.0``, ``layers_to_transform: 4`` for ``[4]``) is the other."""
    if key != "llm.adapter.args":
        return False
    try:
        return bool(LoraSpec.from_args(before[0])
                    == LoraSpec.from_args(after[0]))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return False


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The config a run without a checkpoint started under."""
    try:
        return _jsonable(load_config(run_dir / CONFIG_FILE))
    except ConfigError as err:
        raise CheckpointError(f"cannot resume {str(run_dir)!r}: {err}") \
            from err


def _check_no_lost_checkpoint(run_dir: Path) -> None:
    """CheckpointError if a run without a checkpoint got further than a
    kill before its first one leaves (at most round 1's metrics line):
    its checkpoint was removed, and resuming from round 1 would cut its
    metrics and overwrite its model and summary."""
    metrics = run_dir / METRICS_FILE
    lines = metrics.read_bytes().count(b"\n") if metrics.is_file() else 0
    held = [name for name in (SUMMARY_FILE, ADAPTER_DIR)
            if (run_dir / name).exists()]
    if lines > 1:
        held.insert(0, f"{METRICS_FILE} with {lines} rounds")
    if held:
        what = ", ".join(held)
        raise CheckpointError(
            f"cannot resume {str(run_dir)!r}: it holds {what} but no "
            "checkpoint/ (removed?), so it cannot continue where it "
            "stopped; restore checkpoint/, or start a new run in another "
            "outdir (nothing here was changed)")


def resume_point(cfg: Config) -> Checkpoint | None:
    """The checkpoint ``cfg``'s run continues from (None: from round 1,
    the run stopped before its first checkpoint), after checking that
    the config matches it. Reads only."""
    run_dir = cfg.run_dir
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        if not (run_dir / CONFIG_FILE).exists():
            raise CheckpointError(f"nothing to resume in {str(run_dir)!r}: "
                                  "no checkpoint and no run config; start "
                                  "the run without --resume")
        _check_no_lost_checkpoint(run_dir)
        saved = _saved_config(run_dir)
    else:
        saved = ckpt.config
    diffs = config_differences(saved, cfg)
    if diffs:
        raise CheckpointError(f"cannot resume {str(run_dir)!r}: the config "
                              f"differs from the run's in "
                              f"{'; '.join(diffs)} (only "
                              f"{', '.join(sorted(MAY_CHANGE))} may change)")
    total = cfg["federate.total_round_num"]
    if ckpt is not None and ckpt.round_idx > total:
        raise CheckpointError(f"cannot resume {str(run_dir)!r}: its "
                              f"checkpoint is at round {ckpt.round_idx}, "
                              "past federate.total_round_num "
                              f"({total})")
    return ckpt
