"""Who takes part in round t, and the seed of each local update.

Both are pure functions of (seed, round[, client]) so a resumed run draws
exactly what a straight run draws, whatever happened before.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed from any tuple of ints and strings, stable across
    processes and Python versions (unlike ``hash``)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") >> 1


def clients_per_round(client_num: int, sample_client_rate: float = -1.0,
                      sample_client_num: int = -1) -> int:
    """FederatedScope's rule (cfg_fl_setting.py): a valid rate wins and
    gives ``max(1, int(rate * client_num))``, else ``sample_client_num``,
    else everyone; so both runners draw the same number of clients."""
    if client_num < 1:
        raise ValueError(f"client_num must be >= 1, got {client_num}")
    if sample_client_rate > 0:
        if sample_client_rate > 1:
            raise ValueError("sample_client_rate must be in (0, 1], got "
                             f"{sample_client_rate}")
        return max(1, int(sample_client_rate * client_num))
    if sample_client_num > 0:
        if sample_client_num > client_num:
            raise ValueError(f"sample_client_num {sample_client_num} "
                             f"exceeds client_num {client_num}")
        return sample_client_num
    return client_num


def sample_clients(client_num: int, round_idx: int, seed: int,
                   sample_client_rate: float = -1.0,
                   sample_client_num: int = -1) -> list[int]:
    """Sorted ids in ``1..client_num`` of the clients of ``round_idx``."""
    k = clients_per_round(client_num, sample_client_rate,
                          sample_client_num)
    ids = list(range(1, client_num + 1))
    if k == client_num:
        return ids
    rng = random.Random(derive_seed("participation", seed, round_idx))
    return sorted(rng.sample(ids, k))
