"""A finished run's model from its files alone, and its score again.

What a run leaves in ``adapter/`` is not always the whole model: FedEx-LoRA's
model is W0 + residual + s·B·A (``fedex_residual.safetensors``), and
FedSA-LoRA keeps one B per client (``personal.safetensors``; the plugin
writes ``personal_client<ID>.safetensors``). ``load_trained`` builds the
model a run scored, from the base model and those files, through PEFT's own
``PeftModel.from_pretrained``; ``score_run`` scores it on the test rows the
run was scored on, so a user can check that the files reproduce the run's
number before taking the adapter elsewhere; these two read and write
nothing. ``export_model`` then writes that model as one plain transformers
checkpoint (LoRA, FedEx-LoRA's residual and, for FedSA-LoRA, one client's B
merged into the weights), which ``AutoModelForSequenceClassification``
loads without this package or PEFT, after checking the written copy
against the model it came from.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors import SafetensorError

from federatedscope_rolora.config import Config
from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.runners.outputs import (
    ADAPTER_DIR,
    METRICS_FILE,
    SUMMARY_FILE,
    read_metrics,
    read_summary,
    write_json_atomic,
)
from federatedscope_rolora.runners.setup import (
    apply_threads,
    data_digest,
    device_from_config,
    method_from_config,
    model_fingerprint,
    scored_subset,
    split_test_per_client,
    split_train,
)
from federatedscope_rolora.training.encoding import (
    EncodedDataset,
    collate,
    encode,
    pair_separator,
)
from federatedscope_rolora.training.glue import (
    Split,
    TaskSpec,
    load_task,
    recorded_task_spec,
    task_spec,
)
from federatedscope_rolora.training.local import evaluate
from federatedscope_rolora.training.metrics import mean_over_clients
from federatedscope_rolora.training.models import (
    adapter_parameters,
    check_tok_len,
    load_adapter_state,
    load_base,
)
from federatedscope_rolora.training.residual import (
    PERSONAL_FILE,
    RESIDUAL_FILE,
    personal_file_of,
)


class TrainedError(ValueError):
    """The run's files cannot give the model asked for."""


# What PEFT's save_pretrained writes beside adapter_config.json.
WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass
class Trained:
    """A run's model as it was scored, with what built it."""

    model: torch.nn.Module
    tokenizer: Any
    cfg: Config
    # the run's task, its labels checked against those the run recorded
    task: TaskSpec
    # FedSA-LoRA: each client's own tensors (its B), and the global
    # adapter's values of those keys (the initial B), which a client
    # that never trained scores with; both empty for the other methods
    personal: dict[int, dict[str, torch.Tensor]]
    shared: dict[str, torch.Tensor]
    # the run's summary.json, read once (load_trained refuses a run
    # without a readable one)
    summary: dict[str, Any]
    # where the files were read from, and the clients whose updates the
    # run accepted in some round (metrics.jsonl's "clients")
    run_dir: Path = Path()
    trained_clients: frozenset[int] = frozenset()

    def use_client(self, client_id: int) -> None:
        """Put client ``client_id``'s own tensors into the model (the
        shared ones if it never trained); nothing to do for a method that
        keeps no model per client. TrainedError if it trained but the
        run's ``adapter/`` holds no tensors of its: the shared initial B
        would stand in for its own without a word."""
        clients = self.cfg["federate.client_num"]
        if not 1 <= client_id <= clients:
            raise TrainedError(f"client {client_id}: the run had clients "
                               f"1..{clients}")
        if not self.shared:
            return
        if client_id not in self.personal and \
                client_id in self.trained_clients:
            raise TrainedError(
                f"client {client_id} trained in the run in "
                f"{str(self.run_dir)!r}, but its adapter/ holds no B of "
                f"its ({PERSONAL_FILE}, or the plugin's "
                f"{personal_file_of(client_id)}); in distributed mode, or "
                "with an outdir of its own, a client saves it in its own "
                "run directory's adapter/: copy it here")
        load_adapter_state(self.model,
                           self.personal.get(client_id, self.shared))


def load_trained(run_dir: Path, cfg: Config) -> Trained:
    """The model of the run in ``run_dir`` (config ``cfg``, normally its
    own ``config.yaml``): base model + ``adapter/`` + FedEx-LoRA's
    residual folded into the base weights; FedSA-LoRA's per-client B
    read, to be put in with ``use_client`` (until then the model holds
    the global adapter: the shared A and the initial B)."""
    adapter_dir = Path(run_dir) / ADAPTER_DIR
    if not (adapter_dir / "adapter_config.json").is_file():
        raise TrainedError(f"{str(adapter_dir)!r} holds no adapter "
                           "(adapter_config.json): the run has not "
                           "finished; continue it with run --resume")
    if not (adapter_dir / WEIGHTS_FILE).is_file():
        raise TrainedError(f"{str(adapter_dir)!r} holds no adapter weights "
                           f"({WEIGHTS_FILE})")
    summary = read_summary(Path(run_dir))
    if summary is None:
        # written last, after every file of adapter/: without it those
        # may be half the set (a crash between two of them)
        raise TrainedError(f"{str(run_dir)!r} holds no readable "
                           f"{SUMMARY_FILE}, which a run writes when it "
                           "has written all of its model: the run has "
                           "not finished; continue it with run --resume")
    _check_finished(Path(run_dir), summary)
    apply_threads(cfg)   # eval and export, like the run, on its cores
    _check_method(Path(run_dir), cfg, summary)
    task = _task_of_run(Path(run_dir), cfg, summary)
    from peft import PeftModel

    base, tokenizer = load_base(cfg.model_name, task.num_labels,
                                cfg["seed"])
    try:
        with warnings.catch_warnings():
            # PEFT calls a transformers API that 5.x deprecates; not ours.
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError,
            SafetensorError) as err:   # a damaged adapter_config or file
        raise TrainedError(f"cannot load the adapter in "
                           f"{str(adapter_dir)!r} onto "
                           f"{cfg.model_name!r}: {err}"
                           ) from err
    _check_base(Path(run_dir), cfg, model, summary)
    method = method_from_config(cfg)
    residual = adapter_dir / RESIDUAL_FILE
    if method.has_residual and not residual.is_file():
        raise TrainedError(
            f"{str(adapter_dir)!r} holds no {RESIDUAL_FILE}: FedEx-LoRA's "
            "residual, the part of the merged update the adapter cannot "
            "hold, without which the model is not the run's; copy the "
            "whole adapter/ folder")
    _fold_saved_residual(model, residual)
    model.eval()
    kept = method.plan(1).kept_roles
    shared = {k: v.detach().clone()
              for k, v in adapter_parameters(model).items()
              if role_of(k) in kept}
    return Trained(model, tokenizer, cfg, task, _read_personal(adapter_dir),
                   shared, summary, Path(run_dir),
                   _trained_clients(Path(run_dir)) if shared else
                   frozenset())


def _check_base(run_dir: Path, cfg: Config, model: torch.nn.Module,
                summary: dict[str, Any]) -> None:
    """TrainedError if the base weights under ``model.type`` are not
    those the run trained on (its ``base_digest``): the adapter scored or
    merged onto a fine-tuned, rescaled or replaced checkpoint of the same
    shapes is not the run's model, and export's own check, comparing it
    with itself, passed. A run recorded before the digest is not
    checked."""
    recorded = summary.get("base_digest")
    if not isinstance(recorded, str) or not recorded:
        return
    now = model_fingerprint(model, base_only=True)
    if now != recorded:
        raise TrainedError(
            f"model.type {cfg.model_name!r}: its weights are not those the "
            f"run in {str(run_dir)!r} trained on (base_digest "
            f"{recorded[:12]} in {SUMMARY_FILE}, {now[:12]} now: "
            "fine-tuned, rescaled or another checkpoint at that name); "
            "restore the model the run used")


def _trained_clients(run_dir: Path) -> frozenset[int]:
    """The clients whose update some round accepted (metrics.jsonl)."""
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError) as err:
        raise TrainedError(f"{str(run_dir / METRICS_FILE)!r} cannot be "
                           f"read: {err}") from err
    return frozenset(int(c) for r in records for c in r.get("clients", ()))


def _check_method(run_dir: Path, cfg: Config,
                  summary: dict[str, Any]) -> None:
    """TrainedError if the config names another method than the run
    recorded: the model would be rebuilt wrongly (FedSA-LoRA's clients'
    B left out, FedEx-LoRA's residual read where none belongs)."""
    recorded = summary.get("method")
    given = cfg["federate.method"]
    if isinstance(recorded, str) and recorded != given:
        raise TrainedError(
            f"the run in {str(run_dir)!r} was trained with federate.method "
            f"{recorded}, but the config given says {given}; pass the "
            "config the run ran with (and no federate.method override)")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file of the run; TrainedError naming it if it is
    damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise TrainedError(f"{str(path)!r} cannot be read: {err}") from err


def _check_finished(run_dir: Path, summary: dict[str, Any]) -> None:
    """TrainedError if the run was continued past the rounds its adapter
    holds (``run --resume`` with more rounds, stopped before the end):
    ``adapter/`` and ``summary.json`` are then an earlier finish's, not
    the model of the run its config and metrics describe."""
    done = summary.get("rounds")
    metrics = run_dir / METRICS_FILE
    if not isinstance(done, int) or not metrics.is_file():
        return
    try:
        with open(metrics, encoding="utf-8") as handle:
            lines = sum(1 for line in handle if line.strip())
    except (OSError, UnicodeDecodeError) as err:
        raise TrainedError(f"{str(metrics)!r} cannot be read: {err}") \
            from err
    if lines > done:
        raise TrainedError(
            f"{str(run_dir)!r} has not finished: its adapter and "
            f"{SUMMARY_FILE} are of round {done}, but {METRICS_FILE} goes "
            f"on to round {lines} (the run was continued and stopped); "
            "finish it with run --resume")


def _task_of_run(run_dir: Path, cfg: Config,
                 summary: dict[str, Any]) -> TaskSpec:
    """The run's task as its files give it now; TrainedError where the
    run recorded other labels (your own data, edited since): the head's
    ids would be read under other names, by eval and in export's
    id2label, or not fit the head at all. Your own data absent from
    this machine: the text columns and labels the run recorded."""
    recorded = summary.get("labels")
    columns = summary.get("text_columns")
    if _strings(recorded) and _strings(columns):
        kept = recorded_task_spec(cfg["data.type"], cfg["data.root"] or None,
                                  columns, recorded)
        if kept is not None:   # your own data, not on this machine
            return kept
    task = task_spec(cfg["data.type"], cfg["data.root"] or None)
    if isinstance(recorded, list) and recorded != list(task.label_names):
        raise TrainedError(
            f"data.type {task.name}: the run in {str(run_dir)!r} was "
            f"trained with labels {', '.join(map(str, recorded))} (ids "
            f"0..{len(recorded) - 1}), but its train.tsv under data.root "
            f"now gives {', '.join(task.label_names)}; restore the data "
            "the run was trained on")
    return task


def _strings(value: Any) -> TypeGuard[list[str]]:
    return isinstance(value, list) and bool(value) and \
        all(isinstance(v, str) for v in value)


def _fold_saved_residual(model: torch.nn.Module, path: Path) -> None:
    """Add FedEx-LoRA's saved residual to the base weights it names."""
    if not path.is_file():
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, total in _load_tensors(path).items():
            weight = params.get(name)
            if weight is None or weight.shape != total.shape:
                raise TrainedError(f"{path.name}: {name!r} names no base "
                                   "weight of this model with shape "
                                   f"{tuple(total.shape)}")
            weight.add_(total.to(weight.dtype))


def _read_personal(adapter_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every ``<client>/<key>`` of the run's per-client files."""
    files = sorted(adapter_dir.glob("personal_client*.safetensors"))
    if (adapter_dir / PERSONAL_FILE).is_file():
        files.insert(0, adapter_dir / PERSONAL_FILE)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for path in files:
        for flat, tensor in _load_tensors(path).items():
            client, _, key = flat.partition("/")
            out.setdefault(int(client), {})[key] = tensor
    return out


def score_run(run_dir: Path, cfg: Config, per_client: bool = False,
              client: int | None = None) -> dict[str, Any]:
    """Score the run's model from its files on the test rows the run was
    scored on: the global adapter on the whole scored subset (``eval``),
    or with ``per_client`` every client's model on its own test share
    (``eval_per_client``, as the run's per-client evaluation), or one
    client's (``client``). A client's model is the global adapter except
    for FedSA-LoRA, whose clients keep their own B. Beside the score,
    what ``summary.json`` recorded for it."""
    trained = load_trained(run_dir, cfg)
    train, test = _scored_rows(cfg)
    max_len = cfg["llm.tok_len"]
    check_tok_len(max_len, trained.model, trained.tokenizer, cfg.model_name,
                  len(trained.task.text_columns))
    device = device_from_config(cfg)
    trained.model.to(device)

    def score(split: Split) -> dict[str, float]:
        data: EncodedDataset = encode(split, trained.tokenizer, max_len)
        return evaluate(trained.model, data, trained.task.metrics,
                        batch_size=cfg["rolora.eval_batch_size"],
                        pad_token_id=int(trained.tokenizer.pad_token_id),
                        device=device)

    recorded = trained.summary
    digests = recorded.get("data_digest")
    digests = digests if isinstance(digests, dict) else {}
    digest = digests.get("test")
    # False: not the rows the run was scored on, so its figure is no check
    same_rows = None if digest is None else digest == data_digest(test)
    if not per_client and client is None:
        return {"eval": score(test), "rows": len(test),
                "recorded": recorded.get("final"), "same_rows": same_rows}
    if recorded.get("runner") == "federatedscope":
        raise TrainedError(
            "a run of the FederatedScope plugin scored each client on the "
            "test share FederatedScope's splitter dealt it, which this "
            "command does not rebuild; it scores such a run's global "
            "adapter only (drop --per-client and --client)")
    shares = split_test_per_client(cfg, train, test)
    # the clients' test shares follow how the train rows were dealt
    dealt = digests.get("train")
    if same_rows and dealt is not None:
        same_rows = dealt == data_digest(*split_train(cfg, train))
    scores: dict[int, tuple[dict[str, float], int]] = {}
    for client_id in [client] if client is not None else \
            range(1, len(shares) + 1):
        trained.use_client(client_id)
        rows = shares[client_id - 1]
        if rows:
            scores[client_id] = (score(Split(
                [test.texts[j] for j in rows],
                [test.labels[j] for j in rows], test.source)), len(rows))
    if client is not None:
        if client not in scores:
            raise TrainedError(
                f"client {client} has no test rows to be scored on: "
                f"data.splitter {cfg['data.splitter']!r} dealt it none of "
                f"the {len(test)} scored rows (--per-client scores the "
                "clients that have some)")
        metrics, rows_scored = scores[client]
        return {"eval": metrics, "rows": rows_scored, "client": client,
                "recorded": None, "same_rows": same_rows}
    return {"eval_per_client": mean_over_clients(scores),
            "recorded": recorded.get("final_per_client"),
            "same_rows": same_rows}


def _scored_rows(cfg: Config) -> tuple[Split, Split]:
    """(train split, the test rows the run was scored on)."""
    train, test = load_task(cfg["data.type"], cfg["data.root"] or None,
                            seed=cfg["seed"], holdout=cfg["rolora.holdout"])
    return train, scored_subset(cfg, test)


EXPORT_RECORD = "rolora_export.json"
# Merging s·B·A into W changes float32 rounding only: the logits of the
# written model and of the adapter model agree far inside this.
EXPORT_TOLERANCE = 1e-4


def _logits(model: torch.nn.Module, rows: Split, tokenizer: Any,
            max_len: int) -> torch.Tensor:
    data = encode(rows, tokenizer, max_len)
    inputs = collate(data, range(len(data)), int(tokenizer.pad_token_id))
    inputs.pop("labels")
    with torch.no_grad():
        logits: torch.Tensor = model(**inputs).logits
    return logits.float()


def export_model(run_dir: Path, cfg: Config, out_dir: Path,
                 client: int | None = None, check_rows: int = 16
                 ) -> dict[str, Any]:
    """Write the run's model to ``out_dir`` as one transformers
    checkpoint (weights, a config naming the task's labels, tokenizer)
    with the adapter merged in, and ``rolora_export.json`` saying what it
    is. ``client``: that client's model, required for FedSA-LoRA, whose
    global adapter holds no trained B. With ``check_rows``, the written
    copy is loaded back by transformers alone, its own tokenizer encodes
    the first that many of the run's test rows, and its logits there must
    match the adapter model's to 1e-4. ``out_dir`` must not exist or be
    an empty directory (``.`` or a link to one included): nothing is
    overwritten, and a failed export leaves nothing there, nor the
    parent folders it made."""
    if check_rows < 0:
        raise TrainedError(f"--check-rows {check_rows}: give a number of "
                           "test rows to check the written copy on, or 0 "
                           "to skip the check")
    out_dir = Path(os.path.abspath(out_dir))
    _check_export_target(out_dir)
    trained = load_trained(run_dir, cfg)
    method = cfg["federate.method"]
    if trained.shared and client is None:
        raise TrainedError(
            f"{method} keeps one B per client and its global adapter "
            "holds none of them; export one client's model with --client "
            f"ID (1..{cfg['federate.client_num']})")
    if client is not None and not trained.shared:
        raise TrainedError(
            f"--client {client}: {method} trains one model, the global "
            "adapter, which every client scores; export it without "
            "--client (only FedSA-LoRA's clients keep models of their own)")
    if client is not None:
        trained.use_client(client)
    max_len = cfg["llm.tok_len"]
    rows = None
    if check_rows > 0:
        test = _scored_rows(cfg)[1]
        rows = Split(test.texts[:check_rows], test.labels[:check_rows],
                     test.source)
        before = _logits(trained.model, rows, trained.tokenizer, max_len)
    merged = trained.model.merge_and_unload()  # type: ignore[operator]
    task = trained.task
    labels = task.label_names
    merged.config.id2label = dict(enumerate(labels))
    merged.config.label2id = {name: i for i, name in enumerate(labels)}
    record: dict[str, Any] = {
        "run_dir": str(run_dir), "method": method,
        "task": task.name, "base_model": cfg.model_name,
        "client": client,
        "labels": list(labels),
        "recorded_final": trained.summary.get("final"),
        # a pair's two texts reach this tokenizer as (first, SEP + second)
        # where it marks no boundary itself (GPT-2's); null where it does
        "pair_separator": pair_separator(trained.tokenizer)
        if len(task.text_columns) == 2 else None,
    }
    with _filled_at(out_dir) as partial:
        merged.save_pretrained(str(partial))
        trained.tokenizer.save_pretrained(str(partial))
        if rows is not None:
            diff = _written_diff(partial, rows, before, max_len)
            if not diff <= EXPORT_TOLERANCE:
                raise TrainedError(
                    "the written checkpoint's logits differ from the "
                    f"run's model by {diff:.3g} (> {EXPORT_TOLERANCE:g}) "
                    f"on {len(rows.labels)} test rows; nothing was "
                    "exported")
            record["check"] = {"rows": len(rows.labels),
                               "max_abs_logit_diff": diff}
        write_json_atomic(partial / EXPORT_RECORD, record)
    return record


def _check_export_target(out_dir: Path) -> None:
    """TrainedError unless ``out_dir`` (absolute) can be a new export:
    absent, or an empty directory, under folders (or none yet) rather
    than files. A link to nothing is not absent: it is refused too."""
    if os.path.lexists(out_dir) and (
            not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TrainedError(f"{str(out_dir)!r} exists and is not an empty "
                           "directory; export writes a new one and "
                           "overwrites nothing")
    above = next(p for p in out_dir.parents if os.path.lexists(p))
    if not above.is_dir():
        raise TrainedError(f"cannot export to {str(out_dir)!r}: "
                           f"{str(above)!r} is not a directory")


@contextmanager
def _filled_at(out_dir: Path) -> Iterator[Path]:
    """A fresh folder for the caller to fill, whose files become
    ``out_dir``'s once the caller is done: by renaming it to ``out_dir``,
    or, when ``out_dir`` is an empty directory already (the current one,
    a mount point, a link), by moving them into it, export record last.
    On any error the folder goes, with the parent folders made for it."""
    made = [p for p in out_dir.parents if not os.path.lexists(p)]
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainedError(f"cannot create {str(out_dir.parent)!r}: "
                           f"{err}") from err
    into = out_dir.is_dir()
    try:
        partial = _fresh_folder(out_dir if into else out_dir.parent)
    except OSError as err:   # a read-only parent, /proc, ...
        for folder in made:
            with suppress(OSError):
                folder.rmdir()
        raise TrainedError(f"cannot write into "
                           f"{str(out_dir if into else out_dir.parent)!r}:"
                           f" {err}") from err
    try:
        yield partial
        if into:
            for entry in sorted(partial.iterdir(),
                                key=lambda e: e.name == EXPORT_RECORD):
                os.replace(entry, out_dir / entry.name)
        else:
            try:
                partial.rename(out_dir)
            except OSError as err:
                raise TrainedError(f"{str(out_dir)!r} appeared while the "
                                   f"export was written ({err}); nothing "
                                   "was exported") from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        for folder in made:  # deepest first
            with suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(partial, ignore_errors=True)  # emptied, or renamed


def _fresh_folder(parent: Path) -> Path:
    """A new folder in ``parent`` that no one else uses, made with the
    user's usual permissions (not mkdtemp's owner-only ones, which the
    export would keep)."""
    for n in count():
        path = parent / f".rolora-export-{os.getpid()}-{n}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def _written_diff(path: Path, rows: Split, before: torch.Tensor,
                  max_len: int) -> float:
    """Largest logit difference between the checkpoint at ``path``,
    loaded and tokenising with transformers alone, and ``before``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    after = _logits(model.eval(), rows, tokenizer, max_len)
    if after.shape != before.shape:
        return float("inf")
    return float((after - before).abs().max())
