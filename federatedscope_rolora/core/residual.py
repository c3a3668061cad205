"""FedEx-LoRA's base residual: kept by the server, sent to clients.

Every round adds to each adapted module's frozen base weight the residual
s·(mean(B_i A_i) - mean(B)·mean(A)) (core/merging.py). The server keeps
the running total per module, and the last round's residual in the exact
form it travels in (dense, or U and V when those are smaller). A client
that holds the total as of the round before gets just that increment
(``add`` or ``add_u`` + ``add_v``). A client further behind (away for
rounds under sampled participation) gets the increments since the
version it holds, in order (``add``, ``add2``, ...), and one that holds
none (first contact, re-synced after a refusal) gets a zero total
(``set_u`` + ``set_v`` of rank 0, no byte) and the increments since
round 0, whenever those are smaller than the whole total; else the
total itself, dense (``set``). The server keeps the recent increments
for this, as many as are together smaller than the total (so at most
that much memory). Payload keys are
``<module>.fedex_residual.<adapter>.<form>`` (role ``residual``, counted
apart in the ledger).

Totals are float32 sums of the same increments in the same order on the
server and on every client, and factored increments are rebuilt in
float64 before the cast (``merging.reconstruct``), so the totals agree
bit for bit and the frozen-factor fingerprint can cover them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from federatedscope_rolora.core.merging import reconstruct

# The key under which a client's held residual version is recorded.
VERSION_KEY = "fedex_residual"
# set | add | add<j> (the j-th increment of a chain, j >= 2), each dense
# or as factors (_u, _v)
_FORM = re.compile(r"(set|add(?:[2-9]|[1-9]\d+)?)(_u|_v)?")
# One round's residual: (version it applies to, version it makes, its
# forms per module, each {"add": dense} or {"add_u": U, "add_v": V}).
Increment = tuple[int, int, dict[str, dict[str, torch.Tensor]]]


def split_payload(payload: Mapping[str, torch.Tensor]
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """``{residual key: {form: tensor}}`` of a residual payload."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in payload.items():
        key, _, form = name.rpartition(".")
        if not _FORM.fullmatch(form):
            raise ValueError(f"{name!r} is not a residual payload key")
        out.setdefault(key, {})[form] = tensor
    return out


def _steps(forms: Mapping[str, torch.Tensor]
           ) -> tuple[dict[str, torch.Tensor] | None,
                      list[dict[str, torch.Tensor]]]:
    """One key's forms as (its ``set``, or None; its increments in the
    order they apply), each named as ``reconstruct`` reads it."""
    start: dict[str, torch.Tensor] = {}
    adds: dict[int, dict[str, torch.Tensor]] = {}
    for form, tensor in forms.items():
        match = _FORM.fullmatch(form)
        if match is None:
            raise ValueError(f"{form!r} is not a residual form")
        head, tail = match.group(1), match.group(2) or ""
        if head == "set":
            start[form] = tensor
        else:
            adds.setdefault(int(head[3:] or 1), {})[f"add{tail}"] = tensor
    if sorted(adds) != list(range(1, len(adds) + 1)):
        raise ValueError(f"residual increments {sorted(adds)} are not a "
                         "chain 1, 2, ...")
    return start or None, [adds[j] for j in sorted(adds)]


def apply_payload(held: Mapping[str, torch.Tensor],
                  payload: Mapping[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """A client's residual totals after a downlink: ``set`` replaces what
    it holds, then each increment is added in order, as the server added
    them, so the totals agree bit for bit."""
    out = dict(held)
    for key, forms in split_payload(payload).items():
        start, adds = _steps(forms)
        if start is not None:
            out[key] = reconstruct(start).clone()
        elif key not in out:
            raise ValueError(f"residual increment for {key!r}, which the "
                             "client does not hold")
        for form in adds:
            out[key] = out[key] + reconstruct(form)
    return out


def _numel(forms: Mapping[str, Mapping[str, torch.Tensor]]) -> int:
    return sum(t.numel() for form in forms.values() for t in form.values())


def _chain_payload(chain: Sequence[Mapping[str, Mapping[str, torch.Tensor]]]
                   ) -> dict[str, torch.Tensor]:
    """Increments as payload keys: ``add``, ``add2``, ... in order."""
    payload = {}
    for j, forms in enumerate(chain, start=1):
        step = "add" if j == 1 else f"add{j}"
        for key, form in forms.items():
            for name, tensor in form.items():
                payload[f"{key}.{step}{name[3:]}"] = tensor.clone()
    return payload


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
        # (version it applies to, version it makes, forms): the newest
        # increments, fewer values together than the total (``_prune``)
        self.history: list[Increment] = []

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
        self.history.append((self.previous, self.version, self.last))
        self._prune()

    def _prune(self) -> None:
        """Keep the newest increments while together they hold fewer
        values than the total: a longer chain would cost more than the
        total itself, so it is never sent."""
        dense = sum(t.numel() for t in self.total.values())
        kept, size = 0, 0
        for _, _, forms in reversed(self.history):
            size += _numel(forms)
            if size >= dense:
                break
            kept += 1
        self.history = self.history[len(self.history) - kept:]

    def _chain_from(self, held: int
                    ) -> list[dict[str, dict[str, torch.Tensor]]] | None:
        """The increments from version ``held`` to the current one, if
        all are kept."""
        for i, (previous, _, _) in enumerate(self.history):
            if previous == held:
                return [forms for _, _, forms in self.history[i:]]
        return None

    def payload(self, held: int | None) -> dict[str, torch.Tensor]:
        """What a client holding version ``held`` (None: unknown) needs."""
        if held == self.version:
            return {}
        if self.version == 0:
            return self._zero()
        chain = self._chain_from(0 if held is None else held)
        if chain is not None:
            # a client that holds nothing starts from zero, as the server
            # did, and adds the same increments in the same order
            return {**(self._zero() if held is None else {}),
                    **_chain_payload(chain)}
        if held == self.previous and self.last:   # a dense increment
            return _chain_payload([self.last])
        return {f"{k}.set": t.clone() for k, t in self.total.items()}

    def _zero(self) -> dict[str, torch.Tensor]:
        """A zero total as rank-0 factors: no byte on the wire."""
        return {name: t for k, total in self.total.items()
                for name, t in ((f"{k}.set_u", total.new_zeros(
                    total.shape[0], 0)), (f"{k}.set_v", total.new_zeros(
                        0, total.shape[1])))}

    def state_dict(self) -> dict[str, Any]:
        return {"total": {k: t.clone() for k, t in self.total.items()},
                "last": {f"{k}.{form}": t.clone()
                         for k, f in self.last.items()
                         for form, t in f.items()},
                "version": self.version, "previous": self.previous,
                "history": [{"previous": p, "version": v,
                             "forms": {f"{k}.{form}": t.clone()
                                       for k, f in forms.items()
                                       for form, t in f.items()}}
                            for p, v, forms in self.history]}

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
        # older checkpoints keep no history: lagging clients then get the
        # dense total until new increments come
        history = self._saved_history(saved.get("history") or [], version)
        self.total = {k: total[k].clone() for k in self.total}
        self.version, self.previous = version, previous
        self.last = last
        self.history = history

    def _saved_history(self, saved: Sequence[Mapping[str, Any]],
                       version: int) -> list[Increment]:
        """A ``state_dict``'s increments, checked: a chain of rounds
        ending at ``version``, one increment per module that rebuilds to
        its total's shape, finite values."""
        history = []
        expected = None
        for entry in saved:
            before, after = entry["previous"], entry["version"]
            if not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in (before, after)) or not 0 <= before < after \
                    or expected not in (None, before):
                raise ValueError("saved residual history is not a chain of "
                                 "rounds")
            forms = split_payload(entry["forms"])
            if set(forms) != set(self.total) or not all(
                    torch.isfinite(t).all() for t in last_tensors(forms)):
                raise ValueError("saved residual history does not match "
                                 "the adapter's modules or is not finite")
            for key, form in forms.items():
                try:
                    fits = set(form) in ({"add"}, {"add_u", "add_v"}) and \
                        reconstruct(form).shape == self.total[key].shape
                except RuntimeError:      # factors that do not multiply
                    fits = False
                if not fits:
                    raise ValueError(f"saved residual history of {key!r} "
                                     "is not one increment of its shape")
            history.append((before, after, forms))
            expected = after
        if history and expected != version:
            raise ValueError("saved residual history does not end at its "
                             f"version {version}")
        return history
