"""The core: torch and the standard library only.

Parameter roles, the phase schedule, the six methods and their merges,
aggregation, FedEx-LoRA's residual, validation of client updates, byte
accounting and the server's adapter state. Nothing here imports
transformers, peft or federatedscope.
"""
