"""The methods' config names (``federate.method``), importable without
torch so that reading a config stays cheap."""

from __future__ import annotations

METHODS = ("rolora", "lora", "ffa_lora", "fedex_lora", "flexlora",
           "fedsa_lora")
# Methods whose model is personal to each client: evaluated per client
# by default (``rolora.per_client_eval: auto``).
PERSONAL_METHODS = ("fedsa_lora",)
