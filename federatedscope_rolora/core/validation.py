"""Checks on what a client sends, and the frozen-factor fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch


class InvalidUpdate(ValueError):
    """A client update that must not be aggregated; the message says why."""


def fingerprint(state: Mapping[str, torch.Tensor],
                keys: Iterable[str]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``keys``.

    Clients send the fingerprint of their frozen factor with each update;
    the server compares it with its own so a client whose frozen half
    drifted is caught (DESIGN.md, invariant 2).
    """
    digest = hashlib.sha256()
    for key in sorted(keys):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|"
                      .encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return digest.hexdigest()


def validate_tensors(
    who: str,
    tensors: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
) -> None:
    """The update holds exactly the reference's keys, as dense tensors
    with the same shapes and dtypes, and only finite values; else
    InvalidUpdate naming ``who`` and the key."""
    if not isinstance(tensors, Mapping):
        raise InvalidUpdate(f"{who}: the update is a "
                            f"{type(tensors).__name__}, not a mapping of "
                            "tensor names to tensors")
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise InvalidUpdate(f"{who}: tensor names must be strings, got "
                            f"{odd[0]!r}")
    missing = sorted(set(reference) - set(tensors))
    extra = sorted(set(tensors) - set(reference))
    if missing or extra:
        raise InvalidUpdate(f"{who}: wrong key set; missing {missing[:3]}"
                            f"{'...' if len(missing) > 3 else ''}, "
                            f"unexpected {extra[:3]}"
                            f"{'...' if len(extra) > 3 else ''}")
    for key, ref in reference.items():
        value = tensors[key]
        if not isinstance(value, torch.Tensor):
            raise InvalidUpdate(f"{who}: {key} is a {type(value).__name__}, "
                                "not a tensor")
        if value.layout != torch.strided or value.device.type == "meta":
            # a sparse or data-less tensor has no values to check or
            # average (torch.isfinite itself raises on them)
            raise InvalidUpdate(f"{who}: {key} is a {value.layout} tensor "
                                f"on {value.device.type}, expected a dense "
                                "one with values")
        if value.shape != ref.shape:
            raise InvalidUpdate(f"{who}: {key} has shape "
                                f"{tuple(value.shape)}, expected "
                                f"{tuple(ref.shape)}")
        if value.dtype != ref.dtype:
            raise InvalidUpdate(f"{who}: {key} has dtype {value.dtype}, "
                                f"expected {ref.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise InvalidUpdate(f"{who}: {key} holds NaN or Inf values")
