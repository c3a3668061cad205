"""One idempotent registration of the plugin with FederatedScope.

It runs while ``federatedscope.register`` is being imported (see
``hook.py``), so it imports nothing but that module: each registered
function is a thin dispatcher that imports the module doing the work when
FederatedScope first calls it, and answers None for what is not ours.

- ``register_config("rolora")``: every run; adds the ``rolora:`` node
  and its check function;
- ``register_data("rolora_glue")``: ``data.type: <task>@glue``;
- ``register_model("rolora_seqcls")``: ``model.type:
  <name>@huggingface_seqcls``;
- ``register_trainer("rolora_trainer")``: ``trainer.type:
  rolora_trainer``;
- ``register_worker("rolora")``: ``federate.method`` any of the six
  (``core.names.METHODS``).
"""

from __future__ import annotations

import sys
from typing import Any

CONFIG_KEY = "rolora"
DATA_KEY = "rolora_glue"
MODEL_KEY = "rolora_seqcls"
TRAINER_KEY = "rolora_trainer"
WORKER_KEY = "rolora"
_CONFIG_MODULE = "federatedscope.core.configs.config"


def extend_config(cfg: Any) -> None:
    from federatedscope_rolora.fs.cfg_rolora import extend_cfg

    extend_cfg(cfg)


def build_data(config: Any, client_cfgs: Any = None) -> Any:
    from federatedscope_rolora.fs.cfg_rolora import claims_data

    if not claims_data(config):
        return None
    from federatedscope_rolora.fs.data import load_data

    return load_data(config, client_cfgs)


def build_model(model_config: Any, input_shape: Any = None) -> Any:
    from federatedscope_rolora.fs.cfg_rolora import claims_model

    if not claims_model(model_config):
        return None
    from federatedscope_rolora.fs.model import build

    return build(model_config)


def trainer_class(trainer_type: str) -> Any:
    from federatedscope_rolora.fs.cfg_rolora import TRAINER_TYPE

    if trainer_type != TRAINER_TYPE:
        return None
    from federatedscope_rolora.fs.trainer import RoloraTrainer

    return RoloraTrainer


def worker_classes(method: str) -> dict[str, Any] | None:
    from federatedscope_rolora.core.methods import METHODS

    if method not in METHODS:
        return None
    from federatedscope_rolora.fs.client import RoloraClient
    from federatedscope_rolora.fs.server import RoloraServer

    return {"client": RoloraClient, "server": RoloraServer}


def register_all() -> None:
    """Register everything once; calling it again changes nothing.

    If FederatedScope's global config was already built (the plugin was
    loaded late, e.g. by ``fs-main`` after something imported
    FederatedScope), the ``rolora`` node is added to it directly.
    """
    import federatedscope.register as fs_register

    if fs_register.worker_dict.get(WORKER_KEY) is not worker_classes:
        fs_register.register_config(CONFIG_KEY, extend_config)
        fs_register.register_data(DATA_KEY, build_data)
        fs_register.register_model(MODEL_KEY, build_model)
        fs_register.register_trainer(TRAINER_KEY, trainer_class)
        fs_register.register_worker(WORKER_KEY, worker_classes)
    config_module = sys.modules.get(_CONFIG_MODULE)
    global_cfg = getattr(config_module, "global_cfg", None)
    if global_cfg is not None and "federate" in global_cfg \
            and CONFIG_KEY not in global_cfg:
        extend_config(global_cfg)
