"""What the plugin's messages carry, and how it reads them back.

Down (``model_para``, one message per client): ``{key: tensor}``, what
that client lacks (``AdapterServer.downlink``). Up (``model_para``):
``(num_examples, {key: tensor}, meta)`` with ``meta`` holding the
fingerprint of the client's frozen keys, its mean training loss, the
seconds its local update took, its shared settings (JSON, with the
digests of its base weights and its data; checked against the
server's) and the data share it trained on; a client whose local
update raised sends the error text in place of the tensors.
Standalone mode hands these objects over as they are; gRPC turns each
tensor into a base64 pickle (exact dtype and values), tuples into
lists, and ``param2tensor`` undoes that. Bytes are counted from the
tensors before they are sent, never from the encoding.

Per-client evaluation: down (``evaluate``, one message per client),
``{key: tensor}``, what that client's next downlink would send
(``AdapterServer.eval_downlink``; never empty, as the round's merge
changed keys that every client lacks). FederatedScope's gRPC pickles
tensors of ``model_para`` messages only (others become lists of 32-bit
floats), so in distributed mode ``pack_eval_payload`` pickles them
itself. Up (``metrics``): ``{"round": t, "test_total": n, "scores":
JSON}`` with the trainer's ``test_*`` results as JSON text (exact,
where gRPC would send 32-bit floats) and ``"error"`` instead of scores
if the evaluation raised; a client without test rows sends
``test_total`` 0 and no score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from federatedscope.core.auxiliaries.utils import b64serializer, param2tensor

from federatedscope_rolora.core.server import ClientUpdate
from federatedscope_rolora.core.validation import InvalidUpdate
from federatedscope_rolora.fs.cfg_rolora import (
    PROCESS_MAY_DIFFER,
    settings_changes,
)

Upload = tuple[int, Any, dict[str, Any]]


class ClientFailed(InvalidUpdate):
    """The client's local update raised; the message is its error."""


def pack_update(update: ClientUpdate, seconds: float, settings: str,
                share: int) -> Upload:
    """``settings``: the client's ``shared_settings`` (JSON), checked by
    the server against its own (distributed mode: each process reads
    its own YAML); ``share``: the data share it trained on (its
    ``distribute.data_idx``), which no other client may train on."""
    meta = {"fingerprint": update.frozen_fingerprint,
            "loss": float(update.train_loss), "seconds": float(seconds),
            "settings": settings, "share": int(share)}
    return (update.num_examples, update.tensors, meta)


def pack_failure(error: BaseException, seconds: float) -> Upload:
    """What a client whose local update raised sends instead."""
    text = f"raised {type(error).__name__}: {error}"
    return (0, text, {"fingerprint": "", "loss": math.nan,
                      "seconds": float(seconds)})


def unpack_payload(content: Any) -> dict[str, torch.Tensor]:
    """The tensors of a download, whatever the transport did to them."""
    if not isinstance(content, Mapping):
        raise TypeError(f"expected a mapping of adapter tensors, got "
                        f"{type(content).__name__}")
    return {str(k): param2tensor(v) for k, v in content.items()}


def unpack_update(client_id: int, round_idx: int, content: Any,
                  settings: str) -> tuple[ClientUpdate, float, int]:
    """The client's update, the seconds its local update took and the
    data share it trained on; InvalidUpdate (naming the client) if it
    is malformed or a failure, or if the client ran under other
    ``settings`` than the server's."""
    who = f"client {client_id}, round {round_idx}"
    if not isinstance(content, (list, tuple)) or len(content) != 3:
        raise InvalidUpdate(f"{who}: malformed upload (expected num_examples"
                            ", tensors and meta)")
    num_examples, tensors, meta = content
    if not isinstance(meta, Mapping):
        raise InvalidUpdate(f"{who}: malformed upload meta")
    seconds = _number(who, meta, "seconds", 0.0)
    if not (math.isfinite(seconds) and seconds >= 0):
        # NaN would pass every deadline check
        raise InvalidUpdate(f"{who}: upload meta 'seconds' must be finite "
                            f"and >= 0, got {seconds!r}")
    if isinstance(tensors, str):
        raise ClientFailed(tensors)
    if not isinstance(tensors, Mapping):
        raise InvalidUpdate(f"{who}: malformed upload tensors")
    _check_settings(who, meta.get("settings"), settings)
    share = meta.get("share")
    if isinstance(share, bool) or not isinstance(share, int) or share < 1:
        raise InvalidUpdate(f"{who}: upload meta 'share' must be the "
                            "positive data share the client trained on, "
                            f"got {share!r:.40}")
    update = ClientUpdate(
        client_id=client_id, round_idx=round_idx,
        tensors={str(k): _tensor(who, k, v) for k, v in tensors.items()},
        num_examples=num_examples,
        frozen_fingerprint=str(meta.get("fingerprint", "")),
        train_loss=_number(who, meta, "loss", math.nan))
    return update, seconds, share


def upload_tensors(content: Any) -> dict[Any, Any]:
    """The tensors an upload carried, decoded where they can be, for
    counting a refused one's bytes (what is not a tensor counts
    nothing); empty for a failure's text or a malformed upload."""
    if not isinstance(content, (list, tuple)) or len(content) != 3 or \
            not isinstance(content[1], Mapping):
        return {}
    tensors = {}
    for key, value in content[1].items():
        try:
            tensors[key] = _tensor("", key, value)
        except InvalidUpdate:  # undecodable: no bytes
            continue
    return tensors


def _check_settings(who: str, sent: Any, settings: str) -> None:
    """InvalidUpdate naming each key the client ran with otherwise than
    the server: in distributed mode each process reads its own YAML, and
    a client with another learning rate or data subset trained into the
    run without a word."""
    if not isinstance(sent, str):
        raise InvalidUpdate(f"{who}: upload meta holds no settings")
    try:
        changed = settings_changes(sent, settings)
    except (ValueError, TypeError, AttributeError, RecursionError) as err:
        raise InvalidUpdate(f"{who}: unreadable upload settings ({err})"
                            ) from None
    if changed:
        raise InvalidUpdate(
            f"{who}: the client ran under another config than the "
            f"server's: {'; '.join(changed)}; every process of a run "
            "needs the same values of the keys that decide what a client "
            "trains (all but distribute.* and "
            f"{', '.join(sorted(PROCESS_MAY_DIFFER))})")


def _number(who: str, meta: Mapping[str, Any], name: str,
            default: float) -> float:
    value = meta.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidUpdate(f"{who}: upload meta {name!r} must be a "
                            f"number, got {value!r:.40}")
    try:
        return float(value)
    except OverflowError:  # an int past float's range
        raise InvalidUpdate(f"{who}: upload meta {name!r} must be a "
                            "number in float's range, got an integer of "
                            f"{int(value).bit_length()} bits") from None


def _tensor(who: str, name: Any, value: Any) -> Any:
    """``param2tensor`` (which decodes gRPC's base64 pickles), with what
    cannot be decoded refused as InvalidUpdate; validation checks what
    it decodes to."""
    try:
        return param2tensor(value)
    except Exception as err:  # noqa: BLE001 - any decoding error
        raise InvalidUpdate(f"{who}: tensor {name!r} cannot be decoded "
                            f"({type(err).__name__})") from None


def pack_eval_payload(payload: Mapping[str, torch.Tensor], pickled: bool
                      ) -> dict[str, Any]:
    """The ``evaluate`` message's content; ``pickled`` for gRPC."""
    return {k: b64serializer(v) if pickled else v
            for k, v in payload.items()}


def pack_scores(round_idx: int, results: Mapping[str, Any],
                error: str = "") -> dict[str, Any]:
    """A client's ``metrics`` reply: its trainer's ``test_*`` results
    for the model of round ``round_idx``, or why it has none."""
    content: dict[str, Any] = {
        "round": int(round_idx),
        "test_total": int(results.get("test_total", 0))}
    if error:
        content["error"] = error
    else:
        content["scores"] = json.dumps({k: float(v) for k, v in
                                        results.items()})
    return content


def unpack_scores(client_id: int, content: Any
                  ) -> tuple[int, dict[str, float], int]:
    """(round, ``test_*`` results, test examples) of a ``metrics``
    reply; InvalidUpdate naming the client if it is malformed or the
    client's evaluation raised."""
    who = f"client {client_id}"
    if not isinstance(content, Mapping) or "round" not in content:
        raise InvalidUpdate(f"{who}: malformed evaluation reply")
    if "error" in content:
        raise InvalidUpdate(f"{who}: evaluation failed: {content['error']}")
    try:
        results = json.loads(content.get("scores", "{}"))
        examples = int(content["test_total"])
        scores = {str(k): float(v) for k, v in results.items()}
        return int(content["round"]), scores, examples
    except (TypeError, ValueError, AttributeError) as err:
        raise InvalidUpdate(f"{who}: malformed evaluation reply: "
                            f"{err}") from err
