"""What the plugin's messages carry survives FederatedScope's transports
bit for bit: standalone hands objects over, gRPC encodes every value
(``Message.transform`` then ``Message.parse``, exactly what its
``gRPCCommManager`` does on each side)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
pytest.importorskip("federatedscope.core.message",
                    reason="FederatedScope (its llm branch) is not "
                    "installed: see docs/federatedscope.md")

from federatedscope.core.message import Message  # noqa: E402

from federatedscope_rolora.core.server import ClientUpdate  # noqa: E402
from federatedscope_rolora.core.validation import InvalidUpdate  # noqa: E402
from federatedscope_rolora.fs.wire import (  # noqa: E402
    ClientFailed,
    pack_eval_payload,
    pack_failure,
    pack_scores,
    pack_update,
    unpack_payload,
    unpack_scores,
    unpack_update,
    upload_tensors,
)

pytestmark = pytest.mark.fs

ADAPTER = {"r": 2, "lora_alpha": 16, "target_modules": ["query", "value"]}
SETTINGS = json.dumps({"train.optimizer.lr": 0.01, "seed": 1,
                       "llm.adapter.args": [ADAPTER]}, sort_keys=True)


def over_grpc(content: object, msg_type: str = "model_para") -> object:
    sent = Message(msg_type=msg_type, sender=1, receiver=[0], state=2,
                   content=content)
    received = Message()
    received.parse(sent.transform(to_list=True).msg)
    return received.content


def an_update() -> ClientUpdate:
    generator = torch.Generator().manual_seed(0)
    return ClientUpdate(
        client_id=1, round_idx=3,
        tensors={"m.lora_B.default.weight":
                 torch.randn(4, 2, generator=generator),
                 "m.lora_B.x.weight":
                 torch.randn(3, 2, generator=generator).bfloat16()},
        num_examples=80, frozen_fingerprint="ab" * 32, train_loss=0.5)


@pytest.mark.parametrize("transport", ["standalone", "grpc"])
def test_an_update_arrives_exactly(transport: str) -> None:
    update = an_update()
    # gRPC encodes the sent dict in place, as FederatedScope does
    expected = {k: v.clone() for k, v in update.tensors.items()}
    content = pack_update(update, seconds=1.25, settings=SETTINGS, share=1)
    if transport == "grpc":
        content = over_grpc(content)  # type: ignore[assignment]

    received, seconds, share = unpack_update(1, 3, content, SETTINGS)

    assert received.tensors.keys() == expected.keys()
    for key, tensor in expected.items():
        assert received.tensors[key].dtype == tensor.dtype
        assert torch.equal(received.tensors[key], tensor)
    assert received.frozen_fingerprint == update.frozen_fingerprint
    assert received.num_examples == 80
    assert received.train_loss == pytest.approx(0.5)
    assert seconds == pytest.approx(1.25)
    assert share == 1


def test_a_download_arrives_exactly_over_grpc() -> None:
    payload = dict(an_update().tensors)
    expected = {k: v.clone() for k, v in payload.items()}

    received = unpack_payload(over_grpc(payload))

    assert received.keys() == expected.keys()
    assert all(torch.equal(received[k], v) and received[k].dtype == v.dtype
               for k, v in expected.items())


def test_a_client_failure_is_an_update_left_out_with_its_error() -> None:
    content = over_grpc(pack_failure(ValueError("out of memory"), 2.0))

    with pytest.raises(ClientFailed, match="raised ValueError: out of"):
        unpack_update(2, 1, content, SETTINGS)


def test_a_malformed_upload_names_the_client() -> None:
    with pytest.raises(InvalidUpdate, match="client 2, round 1"):
        unpack_update(2, 1, ["not", "an update"], SETTINGS)


@pytest.mark.parametrize("meta", [
    {"seconds": "abc"}, {"seconds": None}, {"seconds": float("nan")},
    {"seconds": -5.0}, {"seconds": float("inf")}, {"loss": "x"},
    {"loss": True}, {"share": None}, {"share": 0}, {"share": True},
    {"share": "1"}, {"seconds": 10**400}], ids=str)
def test_bad_upload_meta_is_refused_naming_the_field(
        meta: dict[str, object]) -> None:
    """A malformed number raised ValueError/TypeError out of the
    server's round, and NaN seconds passed every deadline check."""
    num_examples, tensors, good = pack_update(an_update(), seconds=1.0,
                                           settings=SETTINGS, share=1)

    with pytest.raises(InvalidUpdate, match="client 2, round 1: upload "
                       f"meta '{next(iter(meta))}' must be"):
        unpack_update(2, 1, (num_examples, tensors, {**good, **meta}),
                      SETTINGS)


@pytest.mark.parametrize("value", ["not-base64!!", "AAAA"])
def test_a_tensor_that_cannot_be_decoded_is_refused(value: object) -> None:
    """gRPC sends tensors as base64 pickles; a string that is not one
    raised out of the server's round."""
    num_examples, tensors, meta = pack_update(an_update(), seconds=1.0,
                                           settings=SETTINGS, share=1)
    bad = {**tensors, "m.lora_B.default.weight": value}

    with pytest.raises(InvalidUpdate, match="client 2, round 1: tensor "
                       "'m.lora_B.default.weight' cannot be decoded"):
        unpack_update(2, 1, (num_examples, bad, meta), SETTINGS)


def test_a_refused_uploads_tensors_are_read_for_its_bytes() -> None:
    """What a refused upload carried is counted as refused traffic:
    its tensors decoded as the transport sent them, a value that cannot
    be decoded skipped, nothing for a failure or a malformed upload."""
    update = an_update()
    # gRPC encodes the sent dict in place
    expected = {k: v.clone() for k, v in update.tensors.items()}
    content = over_grpc(pack_update(update, seconds=1.0,
                                    settings=SETTINGS, share=1))
    num_examples, tensors, meta = content

    read = upload_tensors(content)

    assert read.keys() == expected.keys()
    assert all(torch.equal(read[k], v) for k, v in expected.items())
    spoilt = {**tensors, "m.lora_B.x.weight": "not-base64!!"}
    assert upload_tensors((num_examples, spoilt, meta)).keys() == \
        {"m.lora_B.default.weight"}
    for nothing in (pack_failure(ValueError("x"), 1.0), ["not", "one"],
                    (1, ["a list"], {}), None):
        assert upload_tensors(nothing) == {}


def test_the_finish_message_carries_no_weights_and_travels() -> None:
    for untrusted in ([], [2], [1, 3]):
        content = {"round": 3, "kept_untrusted": untrusted}
        assert over_grpc(dict(content), msg_type="finish") == content


@pytest.mark.parametrize("transport", ["standalone", "grpc"])
def test_an_evaluation_payload_arrives_exactly(transport: str) -> None:
    """FederatedScope's gRPC pickles the tensors of ``model_para`` only
    (an ``evaluate`` message's would become 32-bit float lists)."""
    payload = dict(an_update().tensors)
    expected = {k: v.clone() for k, v in payload.items()}
    content = pack_eval_payload(payload, pickled=transport == "grpc")
    if transport == "grpc":
        content = over_grpc(content, msg_type="evaluate")  # type: ignore

    received = unpack_payload(content)

    assert received.keys() == expected.keys()
    assert all(torch.equal(received[k], v) and received[k].dtype == v.dtype
               for k, v in expected.items())


def test_a_clients_scores_arrive_exactly_over_grpc() -> None:
    results = {"test_acc": 0.1 + 0.2, "test_avg_loss": 1 / 3,
               "test_total": 27.0}

    got = unpack_scores(2, over_grpc(pack_scores(4, results),
                                     msg_type="metrics"))

    assert got == (4, results, 27)


def test_no_test_rows_and_a_failed_evaluation() -> None:
    assert unpack_scores(1, over_grpc(pack_scores(2, {}),
                                      msg_type="metrics")) == (2, {}, 0)
    failed = over_grpc(pack_scores(2, {}, "ValueError: boom"),
                       msg_type="metrics")
    with pytest.raises(InvalidUpdate, match="client 3: evaluation failed: "
                       "ValueError: boom"):
        unpack_scores(3, failed)


@pytest.mark.parametrize("transport", ["standalone", "grpc"])
def test_a_client_under_another_config_is_refused_naming_the_keys(
        transport: str) -> None:
    """Distributed mode: each process reads its own YAML, and a client
    with another learning rate (or seed, which deals its data) trained
    into the run without a word."""
    theirs = json.dumps({**json.loads(SETTINGS), "train.optimizer.lr": 0.5,
                         "seed": 3})
    content = pack_update(an_update(), seconds=1.0, settings=theirs, share=1)
    if transport == "grpc":
        content = over_grpc(content)  # type: ignore[assignment]

    with pytest.raises(InvalidUpdate, match=r"client 2, round 1: the "
                       r"client ran under another config than the "
                       r"server's: seed \(1 for the run, 3 here\); "
                       r"train.optimizer.lr \(0.01 for the run, 0.5 here\)"):
        unpack_update(2, 1, content, SETTINGS)


def test_an_adapter_spelt_out_at_its_defaults_is_the_same_config() -> None:
    spelt = json.dumps({**json.loads(SETTINGS), "llm.adapter.args": [
        {**ADAPTER, "lora_dropout": 0.0}]})

    content = pack_update(an_update(), seconds=1.0, settings=spelt, share=1)
    update, _, _ = unpack_update(2, 1, content, SETTINGS)

    assert update.client_id == 2


@pytest.mark.parametrize("sent", ["1", "null", "[[1]]", "[1]", '"x"',
                                  "{"])
def test_unreadable_upload_settings_are_refused(sent: str) -> None:
    """Settings that are not a JSON object raised TypeError out of the
    server's round (one malformed upload stopped the run)."""
    num_examples, tensors, meta = pack_update(an_update(), seconds=1.0,
                                              settings=SETTINGS, share=1)

    with pytest.raises(InvalidUpdate, match="client 2, round 1: "
                       "unreadable upload settings"):
        unpack_update(2, 1, (num_examples, tensors,
                             {**meta, "settings": sent}), SETTINGS)


def test_an_upload_without_settings_is_refused() -> None:
    num_examples, tensors, meta = pack_update(an_update(), seconds=1.0,
                                              settings=SETTINGS, share=1)
    del meta["settings"]

    with pytest.raises(InvalidUpdate, match="upload meta holds no settings"):
        unpack_update(2, 1, (num_examples, tensors, meta), SETTINGS)
