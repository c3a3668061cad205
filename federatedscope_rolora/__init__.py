"""RoLoRA, LoRA and FFA-LoRA for federated fine-tuning, as a plugin for
FederatedScope-LLM and as an embedded runner.

Importing this package is cheap on purpose: it imports neither torch nor
transformers nor federatedscope, because FederatedScope's import hook
(``federatedscope_rolora.fs.hook``) loads it in every interpreter.
"""

__version__ = "0.1.0"
