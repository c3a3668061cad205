"""FedEx-LoRA's base residual: kept by the server, sent to clients.

Every round adds to each adapted module's frozen base weight the residual
s·(mean(B_i A_i) - mean(B)·mean(A)) (core/merging.py). The server keeps
the running total per module, and the last round's residual in the exact
form it travels in (dense, or U and V when those are smaller). A client
that holds the total as of the round before gets just that increment
(``add`` or ``add_u`` + ``add_v``); any other client (first contact, away
for rounds, re-synced after a refusal) gets the whole total (``set``),
which before the first merge is zero and sent as factors of rank 0, so it
costs no byte. Payload keys are ``<module>.fedex_residual.<adapter>.<form>``
(role ``residual``, counted apart in the ledger).

Totals are float32 sums of the same increments in the same order on the
server and on every client, and factored increments are rebuilt in
float64 before the cast (``merging.reconstruct``), so the totals agree
bit for bit and the frozen-factor fingerprint can cover them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from federatedscope_rolora.core.merging import reconstruct

# The key under which a client's held residual version is recorded.
VERSION_KEY = "fedex_residual"
_FORMS = ("set", "set_u", "set_v", "add", "add_u", "add_v")


def split_payload(payload: Mapping[str, torch.Tensor]
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """``{residual key: {form: tensor}}`` of a residual payload."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in payload.items():
        key, _, form = name.rpartition(".")
        if form not in _FORMS:
            raise ValueError(f"{name!r} is not a residual payload key")
        out.setdefault(key, {})[form] = tensor
    return out


def apply_payload(held: Mapping[str, torch.Tensor],
                  payload: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """A client's residual totals after a downlink: ``set`` replaces,
    ``add`` adds to what it holds."""
    out = dict(held)
    for key, form in split_payload(payload).items():
        value = reconstruct(form)
        if "set" in form or "set_u" in form:
            out[key] = value.clone()
        elif key in out:
            out[key] = out[key] + value
        else:
            raise ValueError(f"residual increment for {key!r}, which the "
                             "client does not hold")
    return out


def last_tensors(last: Mapping[str, Mapping[str, torch.Tensor]]
                 ) -> list[torch.Tensor]:
    return [t for form in last.values() for t in form.values()]


class ResidualBook:
    """The server's residual: totals, version, the last increment."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]],
                 dtype: torch.dtype) -> None:
        self.total = {k: torch.zeros(shape, dtype=dtype)
                      for k, shape in shapes.items()}
        self.version = 0      # round of the last increment
        self.previous = 0     # version the last increment applies to
        self.last: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, round_idx: int,
            forms: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Add round ``round_idx``'s residual, as clients will;
        ValueError, changing nothing, if a form or a new total is not
        finite (a client's huge but finite factors can overflow)."""
        if set(forms) != set(self.total):
            raise ValueError("a residual for every adapted module is "
                             "needed")
        totals = {key: self.total[key] + reconstruct(form)
                  for key, form in forms.items()}
        for key in forms:
            if not all(torch.isfinite(t).all() for t in
                       (*forms[key].values(), totals[key])):
                raise ValueError(f"the residual of {key!r} is not finite")
        self.total = totals
        self.previous, self.version = self.version, round_idx
        self.last = {k: dict(f) for k, f in forms.items()}

    def payload(self, held: int | None) -> dict[str, torch.Tensor]:
        """What a client holding version ``held`` (None: unknown) needs."""
        if held == self.version:
            return {}
        if held == self.previous and self.last:
            return {f"{k}.{form}": t.clone() for k, f in self.last.items()
                    for form, t in f.items()}
        if self.version == 0:
            return {name: t for k, total in self.total.items()
                    for name, t in ((f"{k}.set_u", total.new_zeros(
                        total.shape[0], 0)), (f"{k}.set_v", total.new_zeros(
                            0, total.shape[1])))}
        return {f"{k}.set": t.clone() for k, t in self.total.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"total": {k: t.clone() for k, t in self.total.items()},
                "last": {f"{k}.{form}": t.clone()
                         for k, f in self.last.items()
                         for form, t in f.items()},
                "version": self.version, "previous": self.previous}

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        total = saved["total"]
        for key, ref in self.total.items():
            value = total.get(key)
            if not isinstance(value, torch.Tensor) or \
                    value.shape != ref.shape or value.dtype != ref.dtype:
                raise ValueError(f"saved residual {key!r} does not fit "
                                 "this adapter")
        if set(total) != set(self.total):
            raise ValueError("saved residual modules do not match the "
                             "adapter's")
        version, previous = saved["version"], saved["previous"]
        if not all(isinstance(v, int) and not isinstance(v, bool)
                   and v >= 0 for v in (version, previous)) or \
                previous > version:
            raise ValueError(f"saved residual versions {previous}, "
                             f"{version} are not rounds")
        last = split_payload(saved["last"])
        if last and set(last) != set(self.total):
            raise ValueError("saved last residual does not match the "
                             "adapter's modules")
        if not all(torch.isfinite(t).all() for t in
                   (*total.values(), *last_tensors(last))):
            raise ValueError("saved residual holds NaN or Inf values")
        self.total = {k: total[k].clone() for k in self.total}
        self.version, self.previous = version, previous
        self.last = last
