"""Byte accounting counts numel x element_size of what is sent, per role,
round, client and direction."""

from __future__ import annotations

import pytest
import torch

from federatedscope_rolora.core.accounting import (
    DOWN,
    UP,
    TrafficLedger,
    TrafficRecord,
    bytes_by_role,
    tensor_bytes,
)

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_KEY = f"{PREFIX}.query.lora_A.default.weight"
B_KEY = f"{PREFIX}.query.lora_B.default.weight"
B_OTHER = f"{PREFIX}.value.lora_B.other.weight"
HEAD_KEY = "base_model.model.classifier.modules_to_save.default.weight"


@pytest.mark.parametrize(("dtype", "expected"), [
    (torch.float32, 24), (torch.float16, 12), (torch.bfloat16, 12),
    (torch.float64, 48), (torch.int8, 6),
])
def test_tensor_bytes_is_numel_times_element_size(dtype: torch.dtype,
                                                  expected: int) -> None:
    assert tensor_bytes(torch.zeros(2, 3, dtype=dtype)) == expected


def test_tensor_bytes_of_a_view_counts_only_the_view() -> None:
    big = torch.zeros(100, 4)

    assert tensor_bytes(big[:3]) == 3 * 4 * 4


def test_bytes_by_role_sums_each_role() -> None:
    payload = {
        A_KEY: torch.zeros(2, 8),                       # 16 * 4 = 64
        B_KEY: torch.zeros(8, 2),                       # 16 * 4 = 64
        B_OTHER: torch.zeros(8, 2, dtype=torch.half),   # 16 * 2 = 32
        HEAD_KEY: torch.zeros(3, 8, dtype=torch.bfloat16),  # 24 * 2 = 48
    }

    assert bytes_by_role(payload) == {"lora_A": 64, "lora_B": 96,
                                      "head": 48}


def test_bytes_by_role_of_empty_payload_is_empty() -> None:
    assert bytes_by_role({}) == {}


@pytest.mark.parametrize("key", [
    f"{PREFIX}.query.base_layer.weight",
    "base_model.model.classifier.original_module.weight",
])
def test_non_adapter_tensor_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="is not an adapter tensor") as err:
        bytes_by_role({A_KEY: torch.zeros(1), key: torch.zeros(1)})
    assert key in str(err.value)


def test_ledger_records_one_row_per_role() -> None:
    ledger = TrafficLedger()

    ledger.record(2, 7, UP, {A_KEY: torch.zeros(2, 8),
                             HEAD_KEY: torch.zeros(3)})

    assert ledger.records == [TrafficRecord(2, 7, "up", "head", 12),
                              TrafficRecord(2, 7, "up", "lora_A", 64)]


def test_ledger_refuses_unknown_direction() -> None:
    with pytest.raises(ValueError,
                       match="direction must be 'up', 'down' or 'eval_down'"):
        TrafficLedger().record(1, 0, "sideways", {A_KEY: torch.zeros(1)})


def test_ledger_refuses_non_adapter_tensor_and_records_nothing() -> None:
    ledger = TrafficLedger()
    base = f"{PREFIX}.query.base_layer.weight"

    with pytest.raises(ValueError, match="must not travel"):
        ledger.record(1, 0, DOWN, {A_KEY: torch.zeros(4),
                                   base: torch.zeros(4)})
    assert ledger.records == []


def _filled_ledger() -> TrafficLedger:
    ledger = TrafficLedger()
    a, b = torch.zeros(2, 8), torch.zeros(8, 2)         # 64 bytes each
    head = torch.zeros(5)                               # 20 bytes
    ledger.record(1, 0, DOWN, {A_KEY: a, B_KEY: b, HEAD_KEY: head})
    ledger.record(1, 1, DOWN, {A_KEY: a, B_KEY: b, HEAD_KEY: head})
    ledger.record(1, 0, UP, {B_KEY: b})
    ledger.record(1, 1, UP, {B_KEY: b})
    ledger.record(2, 0, DOWN, {B_KEY: b})
    ledger.record(2, 0, UP, {A_KEY: a, HEAD_KEY: head})
    return ledger


def test_totals_over_everything() -> None:
    totals = _filled_ledger().totals()

    assert totals == {
        "up": {"lora_B": 128, "lora_A": 64, "head": 20},
        "down": {"lora_A": 128, "lora_B": 192, "head": 40},
        "up_rejected": {},
        "eval_down": {},
    }


def test_totals_filtered_by_round() -> None:
    ledger = _filled_ledger()

    assert ledger.totals(round_idx=2) == {
        "up": {"lora_A": 64, "head": 20}, "down": {"lora_B": 64},
        "up_rejected": {}, "eval_down": {}}
    assert ledger.totals(round_idx=3) == {"up": {}, "down": {},
                                          "up_rejected": {}, "eval_down": {}}


def test_totals_filtered_by_client() -> None:
    ledger = _filled_ledger()

    assert ledger.totals(client_id=1) == {
        "up": {"lora_B": 64},
        "down": {"lora_A": 64, "lora_B": 64, "head": 20},
        "up_rejected": {}, "eval_down": {}}


def test_totals_filtered_by_round_and_client() -> None:
    ledger = _filled_ledger()

    assert ledger.totals(round_idx=1, client_id=0) == {
        "up": {"lora_B": 64},
        "down": {"lora_A": 64, "lora_B": 64, "head": 20},
        "up_rejected": {}, "eval_down": {}}
    assert ledger.totals(round_idx=2, client_id=1) == {
        "up": {}, "down": {}, "up_rejected": {}, "eval_down": {}}


def test_client_id_zero_and_round_filter_are_not_skipped() -> None:
    """0 is a real client id, not 'no filter'."""
    ledger = _filled_ledger()

    assert ledger.totals(client_id=0) != ledger.totals()


def test_refused_upload_counts_in_up_and_apart_in_up_rejected() -> None:
    """Bytes mean traffic: a refused upload crossed the wire."""
    ledger = _filled_ledger()
    b = torch.zeros(8, 2)                               # 64 bytes

    ledger.record_refused(2, 1, {B_KEY: b, "stray.weight": torch.zeros(3),
                                 "note": "not a tensor"})

    totals = ledger.totals(round_idx=2)
    assert totals["up_rejected"] == {"lora_B": 64, "other": 12}
    assert totals["up"] == {"lora_A": 64, "head": 20, "lora_B": 64,
                            "other": 12}
    assert ledger.totals(round_idx=2, client_id=0)["up_rejected"] == {}
