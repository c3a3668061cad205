"""The server protocol end to end with hand-made clients (invariants 2-5
and 8): what goes down, what comes up, what is averaged, what is refused.

Shapes: rank r = 2 and d = k = 4, so |A| = |B| = 8 elements per module
and the bytes of one factor are exactly half of both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch

from federatedscope_rolora.core.methods import make_method
from federatedscope_rolora.core.roles import LORA_A, LORA_B, role_of
from federatedscope_rolora.core.server import (
    AdapterServer,
    ClientUpdate,
    build_update,
)
from federatedscope_rolora.core.validation import InvalidUpdate

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self"
A_Q = f"{PREFIX}.query.lora_A.default.weight"
B_Q = f"{PREFIX}.query.lora_B.default.weight"
A_V = f"{PREFIX}.value.lora_A.other.weight"
B_V = f"{PREFIX}.value.lora_B.other.weight"
HEAD_W = "base_model.model.classifier.modules_to_save.default.weight"
HEAD_B = "base_model.model.classifier.modules_to_save.default.bias"
ALL = {A_Q, B_Q, A_V, B_V, HEAD_W, HEAD_B}
A_KEYS = {A_Q, A_V}
B_KEYS = {B_Q, B_V}
FACTOR_BYTES = 2 * (2 * 4) * 4          # two modules, 8 floats of 4 bytes

Tensors = dict[str, torch.Tensor]


def initial_adapter() -> Tensors:
    """A seeded, B zero, as PEFT initialises LoRA (invariant 5)."""
    gen = torch.Generator().manual_seed(0)
    return {
        A_Q: torch.randn(2, 4, generator=gen),
        B_Q: torch.zeros(4, 2),
        A_V: torch.randn(2, 4, generator=gen),
        B_V: torch.zeros(4, 2),
        HEAD_W: torch.randn(2, 4, generator=gen),
        HEAD_B: torch.zeros(2),
    }


class Client:
    """A client holds at most its adapter tensors (invariant 6); it
    builds the seeded head itself, as a real client builds its model."""

    def __init__(self, client_id: int, num_examples: int) -> None:
        self.client_id = client_id
        self.num_examples = num_examples
        self.state: Tensors = {k: v for k, v in initial_adapter().items()
                               if role_of(k) == "head"}

    def apply(self, payload: Mapping[str, torch.Tensor]) -> None:
        self.state.update({k: v.clone() for k, v in payload.items()})

    def train(self, server: AdapterServer, round_idx: int,
              values: Mapping[str, float]) -> ClientUpdate:
        """'Local training': set each trained key to the constant given
        for its role, then package the update."""
        plan = server.plan(round_idx)
        for key in plan.trained_keys(self.state):
            self.state[key] = torch.full_like(self.state[key],
                                              values[role_of(key) or key])
        return build_update(self.client_id, plan, self.state,
                            self.num_examples)

    def sync(self, server: AdapterServer, round_idx: int) -> Tensors:
        payload = server.downlink(self.client_id, round_idx)
        self.apply(payload)
        return payload


def _clone(state: Mapping[str, torch.Tensor]) -> Tensors:
    return {k: v.clone() for k, v in state.items()}


def _assert_same_state(got: Mapping[str, torch.Tensor],
                       want: Mapping[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


def _rolora_server(method: str = "rolora", **kwargs: object
                   ) -> AdapterServer:
    return AdapterServer(make_method(method, **kwargs),  # type: ignore
                         initial_adapter())


def _round_one(server: AdapterServer
               ) -> tuple[list[Client], list[ClientUpdate]]:
    """Three clients (1, 2 and 5 examples) sync and train round 1."""
    clients = [Client(0, 1), Client(1, 2), Client(2, 5)]
    for client in clients:
        client.sync(server, 1)
    updates = [client.train(server, 1, {LORA_B: b, LORA_A: a})
               for client, b, a in zip(clients, [8.0, 4.0, 0.0],
                                       [8.0, 4.0, 0.0], strict=True)]
    return clients, updates


# --- a full RoLoRA round trip ----------------------------------------------


def test_round_one_downlink_is_the_initial_adapter_but_the_frozen_head(
) -> None:
    """Every client builds the seeded frozen head itself (its fingerprint
    is checked): nothing travels that need not (invariant 3)."""
    server = _rolora_server()
    init = initial_adapter()

    payloads = [server.downlink(c, 1) for c in range(3)]

    for payload in payloads:
        _assert_same_state(payload, {k: v for k, v in init.items()
                                     if role_of(k) != "head"})
    totals = server.ledger.totals(round_idx=1)
    assert totals["down"] == {
        "lora_A": 3 * FACTOR_BYTES, "lora_B": 3 * FACTOR_BYTES}
    assert totals["up"] == {}


def test_a_trained_head_travels_on_first_contact() -> None:
    server = _rolora_server(train_head=True)

    payload = server.downlink(0, 1)

    _assert_same_state(payload, initial_adapter())


def test_a_client_that_built_another_head_is_refused_then_repaired(
) -> None:
    server = _rolora_server()
    client = Client(0, 1)
    client.state[HEAD_B] = torch.ones(2)          # built with another seed
    client.sync(server, 1)

    with pytest.raises(InvalidUpdate, match="fingerprint"):
        server.receive(client.train(server, 1, {LORA_B: 1.0}))
    payload = client.sync(server, 2)

    assert {HEAD_W, HEAD_B} <= set(payload)
    _assert_same_state(client.state, server.state)


def test_downlink_is_a_copy_of_the_server_state() -> None:
    server = _rolora_server()

    payload = server.downlink(0, 1)
    payload[A_Q].add_(1.0)

    assert torch.equal(server.state[A_Q], initial_adapter()[A_Q])


def test_b_round_sends_only_b_and_averages_it_exactly() -> None:
    server = _rolora_server()
    before = _clone(server.state)
    _, updates = _round_one(server)

    for update in updates:
        assert set(update.tensors) == B_KEYS
        server.receive(update)
    merged = server.aggregate(1)

    # weights 1/8, 2/8, 5/8; values 8, 4, 0: 8/8 + 2*4/8 + 0 = 2
    assert set(merged) == B_KEYS
    for key in B_KEYS:
        assert torch.equal(server.state[key], torch.full((4, 2), 2.0))
    for key in A_KEYS | {HEAD_W, HEAD_B}:
        assert torch.equal(server.state[key], before[key])
    assert server.received() == []


def test_b_round_with_different_values_per_module() -> None:
    server = _rolora_server()
    clients = [Client(0, 1), Client(1, 2), Client(2, 5)]
    for client in clients:
        client.sync(server, 1)
    for client, q, v in zip(clients, [8.0, 4.0, 0.0], [-8.0, 4.0, 8.0],
                            strict=True):
        client.state[B_Q] = torch.full((4, 2), q)
        client.state[B_V] = torch.full((4, 2), v)
        server.receive(build_update(client.client_id, server.plan(1),
                                    client.state, client.num_examples))

    server.aggregate(1)

    # B_Q: 8/8 + 2*4/8 + 5*0/8 = 2;  B_V: -8/8 + 2*4/8 + 5*8/8 = 5
    assert torch.equal(server.state[B_Q], torch.full((4, 2), 2.0))
    assert torch.equal(server.state[B_V], torch.full((4, 2), 5.0))


def test_round_two_downlink_holds_only_the_b_keys() -> None:
    server = _rolora_server()
    clients, updates = _round_one(server)
    for update in updates:
        server.receive(update)
    server.aggregate(1)

    payload = clients[0].sync(server, 2)

    assert set(payload) == B_KEYS
    _assert_same_state(clients[0].state, server.state)
    assert server.ledger.totals(round_idx=2, client_id=0)["down"] == {
        "lora_B": FACTOR_BYTES}


def test_a_round_sends_only_a_and_keeps_b_bit_identical() -> None:
    server = _rolora_server()
    clients, updates = _round_one(server)
    for update in updates:
        server.receive(update)
    server.aggregate(1)
    for client in clients[:2]:
        client.sync(server, 2)
    b_after_round_one = {k: server.state[k].clone() for k in B_KEYS}

    round_two = [clients[0].train(server, 2, {LORA_A: 3.0}),
                 clients[1].train(server, 2, {LORA_A: 6.0})]
    for update in round_two:
        assert set(update.tensors) == A_KEYS
        server.receive(update)
    server.aggregate(2)

    # weights 1/3, 2/3: 3/3 + 2*6/3 = 5
    for key in A_KEYS:
        assert torch.equal(server.state[key], torch.full((2, 4), 5.0))
    for key in B_KEYS:
        assert torch.equal(server.state[key], b_after_round_one[key])


def test_client_that_skipped_rounds_is_resynced_bit_for_bit() -> None:
    server = _rolora_server()
    clients, updates = _round_one(server)
    for update in updates:
        server.receive(update)
    server.aggregate(1)
    for client, value in zip(clients[:2], [3.0, 6.0], strict=True):
        client.sync(server, 2)
        server.receive(client.train(server, 2, {LORA_A: value}))
    server.aggregate(2)
    latecomer = Client(3, 4)      # skipped rounds 1-2 entirely

    missed_round_two = clients[2].sync(server, 3)
    first_contact = latecomer.sync(server, 3)

    # client 2 holds the initial head and A, and its own trained B: A
    # changed in round 2 and B in round 1, the head never did.
    assert set(missed_round_two) == A_KEYS | B_KEYS
    assert set(first_contact) == A_KEYS | B_KEYS
    _assert_same_state(clients[2].state, server.state)
    _assert_same_state(latecomer.state, server.state)
    for client in (clients[2], latecomer):
        update = client.train(server, 3, {LORA_B: 1.0})
        assert update.frozen_fingerprint == server.frozen_fingerprint(3)
        server.receive(update)
    assert server.received() == [2, 3]


def _by_role(payload: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """numel x element_size per role, written out independently of the
    accounting module."""
    out: dict[str, int] = {}
    for key, tensor in payload.items():
        role = str(role_of(key))
        out[role] = out.get(role, 0) + tensor.numel() * tensor.element_size()
    return out


def test_ledger_matches_the_bytes_handed_over() -> None:
    server = _rolora_server()
    clients = [Client(0, 1), Client(1, 2), Client(2, 5)]
    sent: dict[tuple[int, int, str], dict[str, int]] = {}

    for t in (1, 2, 3):
        for client in clients[: 3 if t != 2 else 2]:
            payload = client.sync(server, t)
            sent[(t, client.client_id, "down")] = _by_role(payload)
            update = client.train(server, t, {LORA_A: 1.0 + t,
                                              LORA_B: 2.0 - t})
            sent[(t, client.client_id, "up")] = _by_role(update.tensors)
            server.receive(update)
        server.aggregate(t)

    for (t, client_id, direction), by_role in sent.items():
        totals = server.ledger.totals(round_idx=t, client_id=client_id)
        assert totals[direction] == by_role, (t, client_id, direction)
    assert sent[(1, 0, "down")] == {"lora_A": FACTOR_BYTES,
                                    "lora_B": FACTOR_BYTES}
    assert sent[(2, 0, "down")] == {"lora_B": FACTOR_BYTES}
    assert sent[(3, 2, "down")] == {"lora_A": FACTOR_BYTES,
                                    "lora_B": FACTOR_BYTES}
    assert sent[(2, 1, "up")] == {"lora_A": FACTOR_BYTES}
    assert sent[(3, 2, "up")] == {"lora_B": FACTOR_BYTES}
    assert server.ledger.totals(client_id=2)["up"] == {
        "lora_B": 2 * FACTOR_BYTES}


def test_ledger_breaks_bytes_down_by_role() -> None:
    server = _rolora_server(train_head=True)
    client = Client(0, 1)
    client.sync(server, 1)

    server.receive(client.train(server, 1, {LORA_B: 1.0, "head": 0.5}))

    assert server.ledger.totals(round_idx=1)["up"] == {
        "lora_B": FACTOR_BYTES, "head": (8 + 2) * 4}


def test_rolora_upload_is_one_factor_half_of_lora() -> None:
    uploads = {}
    for method in ("rolora", "lora"):
        server = _rolora_server(method)
        _, updates = _round_one(server)
        for update in updates:
            server.receive(update)
        uploads[method] = sum(server.ledger.totals(round_idx=1)["up"]
                              .values())

    assert uploads["rolora"] == 3 * FACTOR_BYTES
    assert uploads["lora"] == 2 * uploads["rolora"]


def test_lora_round_two_downlink_holds_both_factors() -> None:
    server = _rolora_server("lora")
    clients, updates = _round_one(server)
    for update in updates:
        server.receive(update)
    server.aggregate(1)

    assert set(clients[0].sync(server, 2)) == A_KEYS | B_KEYS


def test_ffa_lora_keeps_the_initial_a_forever() -> None:
    server = _rolora_server("ffa_lora")
    init = initial_adapter()
    clients = [Client(0, 1), Client(1, 3)]

    for t in (1, 2, 3):
        for client in clients:
            payload = client.sync(server, t)
            assert not set(payload) & A_KEYS or t == 1
            server.receive(client.train(server, t, {LORA_B: float(t)}))
        server.aggregate(t)

    for key in A_KEYS:
        assert torch.equal(server.state[key], init[key])
        assert torch.equal(clients[1].state[key], init[key])


def test_trained_head_travels_and_is_averaged() -> None:
    server = _rolora_server(train_head=True)
    clients = [Client(0, 1), Client(1, 3)]
    for client in clients:
        client.sync(server, 1)

    for client, value in zip(clients, [4.0, 8.0], strict=True):
        update = client.train(server, 1, {LORA_B: 0.0, "head": value})
        assert set(update.tensors) == B_KEYS | {HEAD_W, HEAD_B}
        server.receive(update)
    server.aggregate(1)

    # weights 1/4, 3/4: 4/4 + 3*8/4 = 7
    assert torch.equal(server.state[HEAD_B], torch.full((2,), 7.0))


def test_aggregate_does_not_depend_on_arrival_order() -> None:
    results = []
    for order in ([0, 1, 2], [2, 0, 1]):
        server = _rolora_server()
        _, updates = _round_one(server)
        for i in order:
            updates[i].tensors[B_Q][0, 0] = 0.1 * (i + 1)
            server.receive(updates[i])
        results.append(server.aggregate(1))

    _assert_same_state(results[0], results[1])


def test_constructor_refuses_base_weights_and_empty_adapter() -> None:
    base = f"{PREFIX}.query.base_layer.weight"
    adapter = {**initial_adapter(), base: torch.zeros(4, 4)}

    with pytest.raises(ValueError, match="non-adapter tensors"):
        AdapterServer(make_method("rolora"), adapter)
    with pytest.raises(ValueError, match="empty"):
        AdapterServer(make_method("rolora"), {})
    with pytest.raises(ValueError, match="unknown weighting"):
        AdapterServer(make_method("rolora"), initial_adapter(), "median")


def test_server_copies_the_initial_adapter() -> None:
    init = initial_adapter()
    server = AdapterServer(make_method("rolora"), init)

    init[A_Q].add_(1.0)

    assert torch.equal(server.state[A_Q], initial_adapter()[A_Q])


# --- rejection (invariant 8) -------------------------------------------------


def _synced(server: AdapterServer, client_id: int = 1) -> Client:
    client = Client(client_id, 2)
    client.sync(server, 1)
    return client


def _snapshot(server: AdapterServer) -> tuple[object, ...]:
    return (_clone(server.state), dict(server.version),
            list(server.ledger.records), server.received())


def _assert_unchanged(server: AdapterServer,
                      snapshot: tuple[object, ...]) -> None:
    state, version, records, received = snapshot
    _assert_same_state(server.state, state)  # type: ignore[arg-type]
    assert server.version == version
    assert server.ledger.records == records
    assert server.received() == received


def _refused(server: AdapterServer, update: ClientUpdate,
             *fragments: str) -> None:
    """Refused with a message naming the client and the fault; nothing
    of the adapter changed; the upload counted as refused traffic; and
    the server forgot what the client holds (a full re-sync next)."""
    state, version, records, received = _snapshot(server)
    sent = sum(v.numel() * v.element_size()
               for v in update.tensors.values()
               if isinstance(v, torch.Tensor))

    with pytest.raises(InvalidUpdate) as err:
        server.receive(update)

    message = str(err.value)
    assert f"client {update.client_id}" in message
    for fragment in fragments:
        assert fragment in message
    _assert_same_state(server.state, state)  # type: ignore[arg-type]
    assert server.version == version
    assert server.received() == received
    new = server.ledger.records[len(records):]  # type: ignore[arg-type]
    assert all(r.direction == "up_rejected" for r in new)
    assert sum(r.num_bytes for r in new) == sent
    assert server.client_versions.get(update.client_id, {}) == {}


def test_wrong_key_set_is_refused() -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.tensors[A_Q] = server.state[A_Q].clone()

    _refused(server, update, "wrong key set", A_Q)


def test_missing_key_is_refused() -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    del update.tensors[B_V]

    _refused(server, update, "wrong key set", B_V)


def test_wrong_shape_is_refused() -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.tensors[B_Q] = torch.ones(2, 4)

    _refused(server, update, B_Q, "shape (2, 4)")


def test_wrong_dtype_is_refused() -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.tensors[B_V] = update.tensors[B_V].half()

    _refused(server, update, B_V, "torch.float16")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_is_refused(bad: float) -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.tensors[B_Q][3, 1] = bad

    _refused(server, update, B_Q, "NaN or Inf")


def test_drifted_frozen_factor_is_refused() -> None:
    server = _rolora_server()
    client = _synced(server)
    client.state[A_V][0, 0] += 1e-3       # touched the frozen factor

    update = client.train(server, 1, {LORA_B: 1.0})

    _refused(server, update, "frozen-factor fingerprint")


def test_drifted_frozen_head_is_refused() -> None:
    server = _rolora_server()
    client = _synced(server)
    client.state[HEAD_B].fill_(1.0)

    _refused(server, client.train(server, 1, {LORA_B: 1.0}),
             "frozen-factor fingerprint")


def test_second_update_from_the_same_client_is_refused() -> None:
    server = _rolora_server()
    client = _synced(server)
    server.receive(client.train(server, 1, {LORA_B: 1.0}))

    _refused(server, client.train(server, 1, {LORA_B: 2.0}),
             "second update")


def test_update_from_a_never_synced_client_is_refused() -> None:
    server = _rolora_server()
    stranger = Client(7, 3)
    stranger.apply(initial_adapter())      # right values, never sent

    _refused(server, stranger.train(server, 1, {LORA_B: 1.0}),
             "never sent the adapter")


@pytest.mark.parametrize("method", ["lora", "ffa_lora", "flexlora",
                                    "rolora"])
def test_update_from_a_client_not_synced_this_round_is_refused(
        method: str) -> None:
    """Invariant 2: client 1 was left out of round 2's draw (no downlink)
    and uploads from its round-1 copy anyway. Its frozen half may still
    match (LoRA's head, FFA-LoRA's A), so only the sync record can tell;
    averaged, its stale B would pull the mean."""
    def rounds(stale_upload: bool) -> AdapterServer:
        server = _rolora_server(method)
        clients, updates = _round_one(server)
        for update in updates:
            server.receive(update)
        server.aggregate(1)
        clients[0].sync(server, 2)
        server.receive(clients[0].train(server, 2,
                                        {LORA_B: 5.0, LORA_A: 5.0}))
        if stale_upload:
            stale = clients[1].train(server, 2,
                                     {LORA_B: 100.0, LORA_A: 100.0})
            _refused(server, stale, "not sent this round's downlink",
                     "none since its last update")
        server.aggregate(2)
        return server

    # The merge is what client 0 alone gives.
    _assert_same_state(rounds(True).state, rounds(False).state)


def test_a_refused_client_is_not_accepted_again_without_a_resync() -> None:
    """After a refusal the server assumes nothing about the client's
    copy: the same client retrying the round from a repaired copy is
    refused until it gets a downlink (FFA-LoRA, whose A never changes,
    so the fingerprint would pass)."""
    server = _rolora_server("ffa_lora")
    client = _synced(server)
    frozen = sorted(server.plan(1).frozen_keys(server.state))[0]
    good = client.state[frozen].clone()
    client.state[frozen] = good + 1.0
    _refused(server, client.train(server, 1, {LORA_B: 7.0}), "fingerprint")
    client.state[frozen] = good

    _refused(server, client.train(server, 1, {LORA_B: 7.0}),
             "not sent this round's downlink")
    client.sync(server, 1)
    server.receive(client.train(server, 1, {LORA_B: 7.0}))
    assert server.received() == [1]


def test_update_for_a_round_not_yet_open_is_refused_and_blocks_nothing(
        ) -> None:
    """An update stamped with a later round than its client was synced
    for is refused, counted in the round now open, and the honest
    clients' round goes on."""
    server = _rolora_server()
    clients, updates = _round_one(server)
    rogue = clients[0].train(server, 1, {LORA_B: 1.0})
    rogue.round_idx = 5

    _refused(server, rogue, "round 5", "its last was for round 1")
    assert [r.round_idx for r in server.ledger.records
            if r.direction == "up_rejected"] == [1]
    for update in updates[1:]:
        server.receive(update)
    server.aggregate(1)
    assert server.received() == [] and server.aggregated_round == 1


@pytest.mark.parametrize("tensors", [None, {0: torch.zeros(4, 2)},
                                     {("x",): torch.zeros(4, 2)}])
def test_a_malformed_payload_is_refused_not_raised(tensors: object) -> None:
    """receive() turns any payload into InvalidUpdate (what the runners
    catch), records it as refused and re-syncs the client; a tensor under
    an odd name counts as other traffic."""
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.tensors = tensors  # type: ignore[assignment]

    with pytest.raises(InvalidUpdate, match="client 1, round 1"):
        server.receive(update)

    refused = [(r.role, r.num_bytes) for r in server.ledger.records
               if r.direction == "up_rejected"]
    assert refused == ([] if tensors is None else [("other", 32)])
    assert server.client_versions[1] == {}


@pytest.mark.parametrize("count", [0, -3, math.nan, 2.5, True])
def test_bad_example_count_is_refused(count: object) -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.num_examples = count  # type: ignore[assignment]

    _refused(server, update, "num_examples")


@pytest.mark.parametrize("round_idx", [0, -1])
def test_update_for_a_round_below_one_is_refused(round_idx: int) -> None:
    server = _rolora_server()
    update = _synced(server).train(server, 1, {LORA_B: 1.0})
    update.round_idx = round_idx

    _refused(server, update, f"round {round_idx}")


def test_refused_update_gets_its_trained_keys_resent() -> None:
    """The client may have trained them; the server re-syncs them."""
    server = _rolora_server()
    client = _synced(server)
    update = client.train(server, 1, {LORA_B: 1.0})
    update.tensors[B_Q][0, 0] = math.nan
    with pytest.raises(InvalidUpdate):
        server.receive(update)

    payload = client.sync(server, 2)

    assert set(payload) == ALL
    _assert_same_state(client.state, server.state)


def test_aggregate_without_updates_raises() -> None:
    server = _rolora_server()
    before = _snapshot(server)

    with pytest.raises(ValueError, match="round 1: no client update"):
        server.aggregate(1)
    _assert_unchanged(server, before)


def test_unaggregated_updates_of_a_previous_round_are_caught() -> None:
    server = _rolora_server()
    clients, updates = _round_one(server)
    server.receive(updates[0])
    clients[1].sync(server, 2)
    stale_round = clients[1].train(server, 2, {LORA_A: 1.0})

    with pytest.raises(InvalidUpdate,
                       match="updates of round 1 were never aggregated"):
        server.receive(stale_round)
    with pytest.raises(InvalidUpdate,
                       match="updates of round 1 were never aggregated"):
        server.aggregate(2)
    assert server.received() == [0]


def test_round_with_every_update_refused_does_not_block_the_next() -> None:
    server = _rolora_server()
    clients, updates = _round_one(server)
    for update in updates:
        update.tensors[B_Q][0, 0] = math.nan
        with pytest.raises(InvalidUpdate):
            server.receive(update)
    with pytest.raises(ValueError, match="no client update"):
        server.aggregate(1)

    for client in clients:
        client.sync(server, 2)
        server.receive(client.train(server, 2, {LORA_A: 1.0}))
    server.aggregate(2)

    assert torch.equal(server.state[A_Q], torch.ones(2, 4))


def test_late_update_of_an_aggregated_round_is_refused() -> None:
    """Arriving after its round was averaged, it must neither be counted
    nor block the next round."""
    server = _rolora_server()
    clients, updates = _round_one(server)
    for update in updates[:2]:
        server.receive(update)
    server.aggregate(1)

    _refused(server, updates[2], "round 1", "already aggregated")
    clients[0].sync(server, 2)
    server.receive(clients[0].train(server, 2, {LORA_A: 1.0}))
    server.aggregate(2)
    assert torch.equal(server.state[A_V], torch.ones(2, 4))


def test_require_received_names_every_left_out_client() -> None:
    from federatedscope_rolora.core.server import RoundFailed, require_received

    require_received(4, accepted=2, needed=2, rejected={3: "late"})
    with pytest.raises(RoundFailed) as err:
        require_received(4, accepted=1, needed=2,
                         rejected={2: "raised", 3: "late"})

    assert "round 4: 1 client update(s) accepted" in str(err.value)
    assert "client 2: raised; client 3: late" in str(err.value)


@pytest.mark.parametrize("method", ["rolora", "lora", "ffa_lora"])
def test_drifted_client_is_resynced_in_full_and_accepted_next(
        method: str) -> None:
    """Invariant 2: a client whose frozen half drifted (real tensors, not
    a fake fingerprint) is refused, then re-synced with every key; its
    next update is accepted and started from the server's exact state.

    Before the fix, FFA-LoRA refused that client forever (A never
    changes, so it was never re-sent), and RoLoRA accepted its next
    round trained from the drifted A (the fingerprint then covers B)."""
    server = _rolora_server(method)
    client, other = Client(0, 2), Client(1, 3)
    for c in (client, other):
        c.sync(server, 1)
    frozen = server.plan(1).frozen_keys(server.state)
    drifted = sorted(frozen)[0]
    client.state[drifted] = client.state[drifted] + 1e-3

    with pytest.raises(InvalidUpdate, match="fingerprint"):
        server.receive(client.train(server, 1, {LORA_A: 1.0,
                                                LORA_B: 2.0}))
    server.receive(other.train(server, 1, {LORA_A: 1.0, LORA_B: 2.0}))
    server.aggregate(1)

    payload = client.sync(server, 2)

    assert set(payload) == ALL
    _assert_same_state(client.state, server.state)
    server.receive(client.train(server, 2, {LORA_A: 3.0, LORA_B: 4.0}))
    assert server.received() == [0]
