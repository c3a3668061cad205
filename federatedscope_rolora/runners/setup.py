"""Turn a validated config into the pieces a run needs.

Everything that can fail on bad input (task, data files, model, LoRA
targets, partitioning) happens here, before the run writes anything, so a
run that never starts leaves its outdir untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from federatedscope_rolora.config import Config, ConfigError, splitter_alpha
from federatedscope_rolora.core.methods import Method, make_method
from federatedscope_rolora.core.names import PERSONAL_METHODS
from federatedscope_rolora.core.roles import role_of
from federatedscope_rolora.training.encoding import EncodedDataset, encode
from federatedscope_rolora.training.glue import (
    Split,
    TaskSpec,
    load_task,
    task_spec,
)
from federatedscope_rolora.training.local import LocalSpec
from federatedscope_rolora.training.models import (
    LoraSpec,
    ModelError,
    adapter_parameters,
    build_model,
    check_tok_len,
)
from federatedscope_rolora.training.partition import (
    deal_like_train,
    dirichlet_with_shares,
    partition,
    subsample_indices,
)
from federatedscope_rolora.training.prefix import (
    PrefixCache,
    build_prefix_cache,
    cache_bytes,
    check_cache_size,
    check_frozen_prefix,
    distinct_inputs,
    nothing_to_cache,
    prefix_layers,
)
from federatedscope_rolora.training.residual import check_residual_fits

log = logging.getLogger("federatedscope_rolora")


@dataclass
class Federation:
    """The built pieces: one frozen base model, data split over clients."""

    cfg: Config
    task: TaskSpec
    method: Method
    model: torch.nn.Module
    tokenizer: Any
    train: EncodedDataset
    test: EncodedDataset
    client_indices: dict[int, list[int]]   # client id (from 1) -> rows
    local: LocalSpec
    device: torch.device
    sources: dict[str, str]
    # sha256 (data_digest) of the train examples as dealt to clients and
    # of the scored test rows; resume and eval check them against the run
    # (each client's test share follows from these and the config)
    digests: dict[str, str] = field(default_factory=dict)
    # model_fingerprint of the model as built (base weights, head and
    # adapter at their start): resume checks it against the run's
    model_digest: str = ""
    # the frozen base weights alone, before any FedEx-LoRA residual:
    # eval and export check the model they rebuild a run on against it
    base_digest: str = ""
    prefix: PrefixCache | None = None   # None: every layer runs
    scaling: float = 1.0
    # per-client test shares (``rolora.per_client_eval``); empty: none
    client_test: dict[int, EncodedDataset] = field(default_factory=dict)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def method_from_config(cfg: Config) -> Method:
    return make_method(cfg["federate.method"],
                       train_head=cfg["rolora.head"] == "trained",
                       first=cfg["rolora.first"],
                       period=cfg["rolora.period"])


def local_spec_from_config(cfg: Config) -> LocalSpec:
    return LocalSpec(
        optimizer=cfg["train.optimizer.type"],
        lr=float(cfg["train.optimizer.lr"]),
        weight_decay=float(cfg["train.optimizer.weight_decay"]),
        momentum=float(cfg["train.optimizer.momentum"]),
        steps=cfg["train.local_update_steps"],
        unit=cfg["train.batch_or_epoch"],
        batch_size=cfg["dataloader.batch_size"],
        shuffle=cfg["dataloader.shuffle"],
        grad_clip=float(cfg["grad.grad_clip"]),
    )


def per_client_eval(cfg: Config) -> bool:
    """Whether each client's model is also scored on its own test share
    (``rolora.per_client_eval``; auto: for personalised methods)."""
    mode = cfg["rolora.per_client_eval"]
    if mode == "auto":
        return cfg["federate.method"] in PERSONAL_METHODS
    return bool(mode == "always")


def lora_scaling(cfg: Config) -> float:
    """PEFT's scaling of a LoRA module, lora_alpha / r."""
    lora = LoraSpec.from_args(cfg.lora)
    return lora.lora_alpha / lora.r


def split_test_per_client(cfg: Config, train: Split, test: Split
                          ) -> list[list[int]]:
    """The scored test rows dealt over clients as ``split_train`` dealt
    the train rows: equal iid shares, or under ``lda`` each label at the
    Dirichlet proportions the train split drew for that label."""
    seed = cfg["seed"]
    clients = cfg["federate.client_num"]
    shares = None
    if cfg["data.splitter"] == "lda":
        subset, _ = split_train(cfg, train)
        alpha = splitter_alpha(cfg["data.splitter_args"])
        _, shares = dirichlet_with_shares(subset.labels, clients, alpha,
                                          seed)
    return deal_like_train(test.labels, clients, cfg["data.splitter"],
                           seed + 2, shares)


def sample_warnings(train_samples: int, train_rows: int,
                    eval_samples: int, test_rows: int) -> list[str]:
    """What a run should say where ``rolora.train_samples`` or
    ``rolora.eval_samples`` asks for more rows than the data holds: it
    takes them all (summary.json records how many), which a reader of
    the config would not guess."""
    return [f"rolora.{key} is {asked}, but the {what} holds {have} rows: "
            f"all {have} are used"
            for key, asked, have, what in (
                ("train_samples", train_samples, train_rows,
                 "train split"),
                ("eval_samples", eval_samples, test_rows, "test split"))
            if asked and asked > have]


def split_train(cfg: Config, train: Split) -> tuple[Split, list[list[int]]]:
    """The fixed-size train subset and its rows per client.

    The total number of train examples is fixed by ``rolora.train_samples``
    whatever the client count, as in the paper's protocol, so adding
    clients shrinks each client's share instead of adding data.
    """
    size = cfg["rolora.train_samples"] or None
    rows = subsample_indices(len(train), size, cfg["seed"])
    subset = Split([train.texts[i] for i in rows],
                   [train.labels[i] for i in rows], train.source)
    return subset, deal_train(cfg, subset.labels)


def deal_train(cfg: Config, labels: Sequence[int]) -> list[list[int]]:
    """The rows of each client among train examples with ``labels``, by
    ``data.splitter`` and the seed; a ConfigError naming the keys where
    they cannot be dealt. The plugin calls it too, so that a split one
    runner refuses the other refuses in the same words."""
    try:
        return partition(labels, cfg["federate.client_num"],
                         cfg["data.splitter"], cfg["seed"],
                         splitter_alpha(cfg["data.splitter_args"]))
    except ValueError as err:
        raise ConfigError(
            f"cannot split {len(labels)} train examples over "
            f"federate.client_num={cfg['federate.client_num']} clients "
            f"with data.splitter {cfg['data.splitter']!r}: {err}") from err


def scored_subset(cfg: Config, test: Split) -> Split:
    """The test rows a run of ``cfg`` is scored on (``rolora.eval_samples``
    of them, seeded, or all)."""
    rows = subsample_indices(len(test), cfg["rolora.eval_samples"] or None,
                             cfg["seed"] + 1)
    return Split([test.texts[i] for i in rows],
                 [test.labels[i] for i in rows], test.source)


def prefix_cache_from_config(cfg: Config, model: torch.nn.Module,
                             datasets: Sequence[EncodedDataset],
                             pad_token_id: int, device: torch.device
                             ) -> PrefixCache | None:
    """The frozen prefix's states for every input of ``datasets`` when
    ``rolora.prefix_cache`` is on and LoRA leaves layers below it; None
    (every layer runs) otherwise. Refuses a cache larger than
    ``rolora.prefix_cache_mb`` before building it."""
    if not cfg["rolora.prefix_cache"]:
        return None
    adapted = LoraSpec.from_args(cfg.lora).layers_to_transform
    layers = prefix_layers(adapted)
    if layers == 0:
        log.warning("%s", nothing_to_cache(adapted))
        return None
    check_frozen_prefix(model, layers)
    keys = distinct_inputs(datasets)
    check_cache_size(cache_bytes(keys, model), cfg["rolora.prefix_cache_mb"],
                     layers)
    cache = build_prefix_cache(model, keys, layers,
                               pad_token_id=pad_token_id,
                               batch_size=cfg["rolora.eval_batch_size"],
                               device=device)
    log.info("%s", cache.describe())
    return cache


def prefix_summary(cfg: Config, cache: PrefixCache | None
                   ) -> dict[str, Any] | None:
    """``summary.json``'s ``prefix_cache``: None when the key is off, 0
    layers when there was nothing to cache."""
    if not cfg["rolora.prefix_cache"]:
        return None
    if cache is None:
        return PrefixCache(0).summary()
    return cache.summary()


def data_digest(split: Split, parts: Sequence[Sequence[int]] = ()) -> str:
    """sha256 of ``split``'s texts and labels in order, and of how its
    rows are dealt (``parts``): equal digests, same examples to the same
    clients. A file edited, replaced or read differently changes it."""
    payload = json.dumps([split.texts, split.labels,
                          [list(p) for p in parts]], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _digests(subset: Split, parts: Sequence[Sequence[int]], test: Split
             ) -> dict[str, str]:
    return {"train": data_digest(subset, parts), "test": data_digest(test)}


# Values of each tensor the model fingerprint reads, evenly spaced: a
# changed weight file changes them (fine-tuned, rescaled, another
# checkpoint of the same shapes) at the cost of a few ms, not a hash of
# gigabytes.
FINGERPRINT_VALUES = 4096


def model_fingerprint(model: torch.nn.Module, base_only: bool = False
                      ) -> str:
    """sha256 of every parameter's and buffer's name, shape, dtype and
    ``FINGERPRINT_VALUES`` evenly spaced values (their bytes), as built;
    ``base_only``: of the frozen base weights alone (no adapter or
    trained head), which a finished run's model is rebuilt on."""
    digest = hashlib.sha256()
    tensors = [(name, tensor) for name, tensor in
               [*model.named_parameters(), *model.named_buffers()]
               if not base_only or role_of(name) is None]
    with torch.no_grad():
        for name, tensor in tensors:
            flat = tensor.detach().reshape(-1)
            picks = torch.linspace(0, max(flat.numel() - 1, 0),
                                   min(flat.numel(), FINGERPRINT_VALUES),
                                   device=flat.device).long()
            values = flat[picks].contiguous().cpu()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|"
                          .encode())
            digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_digest(cfg: Config) -> str:
    """The ``model_digest`` ``build_federation`` records for ``cfg``: the
    model built (adapter and head from the seed), no data read."""
    return model_fingerprint(_model_alone(cfg))


def _model_alone(cfg: Config) -> torch.nn.Module:
    """The model ``cfg`` builds (adapter and head from the seed), without
    its data, for the checks made before a comparison's first run."""
    task = task_spec(cfg["data.type"], cfg["data.root"] or None)
    model, _ = build_model(cfg.model_name, task.num_labels,
                           LoraSpec.from_args(cfg.lora), cfg["seed"])
    return model


def data_digests(cfg: Config) -> dict[str, str]:
    """The ``data_digest`` of the train examples as ``cfg`` deals them and
    of its scored test rows, from the data alone (no model built), as
    ``build_federation`` records them."""
    train, test = load_task(cfg["data.type"], cfg["data.root"] or None,
                            seed=cfg["seed"], holdout=cfg["rolora.holdout"])
    subset, parts = split_train(cfg, train)
    return _digests(subset, parts, scored_subset(cfg, test))


def device_from_config(cfg: Config) -> torch.device:
    """CUDA device ``device`` with ``use_gpu`` where CUDA is there, else
    the CPU; ConfigError naming ``device`` if this machine lacks it."""
    if cfg["use_gpu"] and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if not 0 <= cfg["device"] < count:
            raise ConfigError(f"config key 'device' is {cfg['device']}, "
                              f"but this machine has CUDA devices "
                              f"0..{count - 1}")
        return torch.device("cuda", cfg["device"])
    return torch.device("cpu")


def _never_trained(method: Method) -> set[str]:
    """The factors (lora_A, lora_B) no round of ``method`` trains."""
    cycle = 2 * getattr(method, "period", 1)   # RoLoRA: both phases
    trained = set().union(*(method.plan(t).trained_roles
                            for t in range(1, cycle + 1)))
    return {"lora_A", "lora_B"} - trained


def check_method_model(model: torch.nn.Module, method: Method,
                       name: str) -> None:
    """ModelError if ``method`` cannot train this model's adapter:
    FedEx-LoRA's residual must fit every adapted layer, and a factor the
    method never trains must not start at zero. PEFT starts an
    embedding's lora_embedding_A at zero (a Linear's lora_B): FFA-LoRA,
    which freezes A, then trained nothing there, every round, without a
    word (B's gradient is zero with A)."""
    if method.has_residual:
        check_residual_fits(model, name)
    never = _never_trained(method)
    zero = sorted({k.rpartition(".lora_")[0].rpartition(".")[2]
                   for k, p in adapter_parameters(model).items()
                   if role_of(k) in never and not bool(p.detach().any())})
    if zero:
        raise ModelError(
            f"{method.name} never trains lora_A, but PEFT starts it at "
            f"zero in {', '.join(zero)} of {name!r} (embedding layers), "
            "so nothing there would learn; target Linear layers only "
            "(e.g. query, value), or use another method")


def check_method_fits(cfg: Config) -> None:
    """What ``build_federation`` checks of ``cfg``'s method alone, for a
    comparison to refuse before its first run (``check_method_model``;
    a model is built, without data)."""
    method = method_from_config(cfg)
    if not (method.has_residual or _never_trained(method)):
        return
    check_method_model(_model_alone(cfg), method, cfg.model_name)


def apply_threads(cfg: Config) -> None:
    """torch's intra-op threads as ``rolora.threads`` says (0: torch's
    own choice, every core)."""
    if cfg["rolora.threads"]:
        torch.set_num_threads(cfg["rolora.threads"])


def build_federation(cfg: Config) -> Federation:
    """Load data and model for ``cfg``; raises on bad input, writes
    nothing."""
    if cfg["federate.mode"] != "standalone":
        raise ValueError("federate.mode 'distributed' needs FederatedScope "
                         "(see the README); the embedded runner simulates "
                         "all clients in one process")
    apply_threads(cfg)
    root = cfg["data.root"] or None
    task = task_spec(cfg["data.type"], root)
    train, test = load_task(cfg["data.type"], root, seed=cfg["seed"],
                            holdout=cfg["rolora.holdout"])
    for warning in sample_warnings(cfg["rolora.train_samples"], len(train),
                                   cfg["rolora.eval_samples"], len(test)):
        log.warning("%s", warning)
    subset, parts = split_train(cfg, train)
    test = scored_subset(cfg, test)
    lora = LoraSpec.from_args(cfg.lora)
    model, tokenizer = build_model(cfg.model_name, task.num_labels, lora,
                                   cfg["seed"])
    fingerprint = model_fingerprint(model)
    base_digest = model_fingerprint(model, base_only=True)
    method = method_from_config(cfg)
    check_method_model(model, method, cfg.model_name)
    device = device_from_config(cfg)
    max_len = cfg["llm.tok_len"]
    check_tok_len(max_len, model, tokenizer, cfg.model_name,
                  len(task.text_columns))
    try:
        model.to(device)
    except (RuntimeError, MemoryError) as err:   # e.g. out of GPU memory
        raise ModelError(f"cannot move model {cfg.model_name!r} to "
                         f"{device}: {type(err).__name__}: {err}") from err
    encoded = (encode(subset, tokenizer, max_len),
               encode(test, tokenizer, max_len))
    pad = int(tokenizer.pad_token_id)
    client_test = {}
    if per_client_eval(cfg):
        for i, rows in enumerate(split_test_per_client(cfg, train, test)):
            share = Split([test.texts[j] for j in rows],
                          [test.labels[j] for j in rows], test.source)
            client_test[i + 1] = encode(share, tokenizer, max_len)
    return Federation(
        cfg=cfg, task=task, method=method, model=model,
        tokenizer=tokenizer, train=encoded[0], test=encoded[1],
        client_indices={i + 1: rows for i, rows in enumerate(parts)},
        local=local_spec_from_config(cfg), device=device,
        sources={"train": train.source, "test": test.source},
        digests=_digests(subset, parts, test), model_digest=fingerprint,
        base_digest=base_digest,
        prefix=prefix_cache_from_config(cfg, model, encoded, pad, device),
        scaling=lora.lora_alpha / lora.r, client_test=client_test,
    )
