"""The core: torch and the standard library only.

Parameter roles, the phase schedule, the three methods, aggregation,
validation of client updates, byte accounting and the server's adapter
state. Nothing here imports transformers, peft or federatedscope.
"""
