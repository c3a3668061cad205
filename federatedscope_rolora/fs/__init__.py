"""The FederatedScope-LLM plugin: RoLoRA, LoRA and FFA-LoRA inside
FederatedScope's own ``main.py``, simulator and distributed mode.

Nothing here is imported at interpreter start-up except ``hook``, which
the installed ``.pth`` file loads: it waits for ``federatedscope.register``
to be imported and only then registers the plugin (``register.py``). The
modules that import federatedscope, torch or transformers are loaded by
FederatedScope itself, when it calls a registered builder.
"""
