"""One client's local update, and evaluation of the global adapter."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from federatedscope_rolora.training.encoding import (
    EncodedDataset,
    batch_indices,
    collate,
)
from federatedscope_rolora.training.metrics import compute_metrics
from federatedscope_rolora.training.prefix import (
    PrefixCache,
    cached_inputs,
    run_model,
)


@dataclass(frozen=True)
class LocalSpec:
    """How a client trains: ``train.*``, ``dataloader.*``, ``grad.*``."""

    optimizer: str = "AdamW"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    steps: int = 1
    unit: str = "batch"          # 'batch' or 'epoch'
    batch_size: int = 16
    shuffle: bool = True
    grad_clip: float = -1.0


@dataclass(frozen=True)
class LocalResult:
    loss: float          # mean training loss over the local batches
    batches: int
    examples_seen: int


def make_optimizer(params: list[torch.nn.Parameter], spec: LocalSpec
                    ) -> torch.optim.Optimizer:
    if spec.optimizer == "SGD":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    if spec.optimizer == "Adam":
        return torch.optim.Adam(params, lr=spec.lr,
                                weight_decay=spec.weight_decay)
    if spec.optimizer == "AdamW":
        return torch.optim.AdamW(params, lr=spec.lr,
                                 weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}")


def _batches(indices: Sequence[int], spec: LocalSpec,
             generator: torch.Generator) -> Iterator[list[int]]:
    """``steps`` batches (cycling through reshuffled epochs), or ``steps``
    full epochs."""
    gen = generator if spec.shuffle else None
    if spec.unit == "epoch":
        for _ in range(spec.steps):
            yield from batch_indices(indices, spec.batch_size, gen)
        return
    produced = 0
    while produced < spec.steps:
        for batch in batch_indices(indices, spec.batch_size, gen):
            yield batch
            produced += 1
            if produced == spec.steps:
                return


def _outputs(model: torch.nn.Module, data: EncodedDataset,
             rows: Sequence[int], pad_token_id: int, device: torch.device,
             cache: PrefixCache | None) -> Any:
    """The model's output on a batch of ``rows``; with a prefix cache,
    only the layers above the prefix run, on the cached states."""
    inputs = collate(data, rows, pad_token_id)
    if cache is not None:
        inputs = cached_inputs(cache, data, rows, inputs)
    return run_model(model, {k: v.to(device) for k, v in inputs.items()},
                     cache)


def local_train(model: torch.nn.Module, data: EncodedDataset,
                indices: Sequence[int], spec: LocalSpec, *, seed: int,
                pad_token_id: int, device: torch.device,
                cache: PrefixCache | None = None) -> LocalResult:
    """Train the parameters that have ``requires_grad`` on ``indices``.

    A fresh optimizer per round, as in FedAvg; ``seed`` fixes both the
    batch order and dropout, so a local update is reproducible alone.
    The batches are the same with and without a prefix ``cache``.
    """
    if not indices:
        raise ValueError("a client with no examples cannot train")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    optimizer = make_optimizer(params, spec)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    total, batches, seen = 0.0, 0, 0
    for batch in _batches(indices, spec, generator):
        loss = _outputs(model, data, batch, pad_token_id, device,
                        cache).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        optimizer.step()
        total += float(loss.detach())
        batches += 1
        seen += len(batch)
    model.eval()
    return LocalResult(total / batches, batches, seen)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: EncodedDataset,
             metric_names: Sequence[str], *, batch_size: int,
             pad_token_id: int, device: torch.device,
             cache: PrefixCache | None = None) -> dict[str, float]:
    """Task metrics and mean loss of the model on all of ``data``."""
    model.eval()
    # Batching rows of similar length wastes little compute on padding.
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    predictions = [0] * len(data)
    loss_sum = 0.0
    for batch in batch_indices(order, batch_size, None):
        out = _outputs(model, data, batch, pad_token_id, device, cache)
        loss_sum += float(out.loss) * len(batch)
        for i, label in zip(batch, out.logits.argmax(dim=-1).tolist(),
                            strict=True):
            predictions[i] = label
    metrics = compute_metrics(predictions, data.labels, metric_names)
    metrics["loss"] = loss_sum / len(data)
    return metrics
