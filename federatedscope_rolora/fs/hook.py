"""The import hook that plugs this package into FederatedScope.

FederatedScope loads no outside plugins, and its global config is built
while ``federatedscope.core.configs.config`` is first imported, right after
that module imports ``federatedscope.register``. So a plugin's
``register_*`` calls must run as soon as ``federatedscope.register`` exists
and before anything else of FederatedScope. The ``.pth`` file installed
with this package calls :func:`install` at interpreter start-up, which
only puts a finder at the front of ``sys.meta_path``. The finder answers
two imports and steps aside for every other one:

- ``federatedscope``: sets ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``
  unless it is set, before FederatedScope's generated gRPC code loads
  protobuf (recent protobuf refuses that code otherwise);
- ``federatedscope.register``: the usual finders load it, and the plugin
  registers itself the moment the module has run.

Only ``os`` and ``sys`` are imported here, both loaded at start-up anyway,
so a process that never touches FederatedScope pays one list insert and
a string comparison per import. ``FEDERATEDSCOPE_ROLORA_NO_HOOK=1`` turns
the hook off.
"""

from __future__ import annotations

import os
import sys

# ``typing`` costs milliseconds to import; the type checker treats this
# name as true, the interpreter never imports these.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

PROTOBUF_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
OPT_OUT_ENV = "FEDERATEDSCOPE_ROLORA_NO_HOOK"
PACKAGE = "federatedscope"
REGISTER_MODULE = "federatedscope.register"


class PluginError(ImportError):
    """The plugin could not register with FederatedScope."""


class RegisterHook:
    """Meta-path finder that loads nothing itself: it wraps the loader of
    ``federatedscope.register`` so the plugin registers right after it."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == PACKAGE:
            os.environ.setdefault(PROTOBUF_ENV, "python")
            return None
        if fullname != REGISTER_MODULE:
            return None
        spec = _find_with_other_finders(self, fullname, path, target)
        if spec is not None and spec.loader is not None:
            # duck-typed: importlib.abc costs start-up time to import
            spec.loader = _RegisteringLoader(  # type: ignore[assignment]
                spec.loader)
        return spec


class _RegisteringLoader:
    """Runs the real loader, then registers the plugin; anything else is
    the real loader's business."""

    def __init__(self, loader: object) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        register_now()

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


def _find_with_other_finders(hook: RegisterHook, fullname: str,
                             path: Sequence[str] | None,
                             target: ModuleType | None
                             ) -> ModuleSpec | None:
    for finder in list(sys.meta_path):
        if finder is hook or not hasattr(finder, "find_spec"):
            continue
        spec: ModuleSpec | None = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def register_now() -> None:
    """Register the plugin (idempotent); a failure names the way out."""
    try:
        from federatedscope_rolora.fs.register import register_all

        register_all()
    except Exception as err:
        raise PluginError(
            f"federatedscope-rolora could not register its plugin with "
            f"FederatedScope: {err}. Set {OPT_OUT_ENV}=1 to run "
            "FederatedScope without it.") from err


def installed() -> bool:
    return any(isinstance(f, RegisterHook) for f in sys.meta_path)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once). If FederatedScope
    is already imported, set the protobuf backend and register now."""
    if os.environ.get(OPT_OUT_ENV):
        return
    if not installed():
        sys.meta_path.insert(0, RegisterHook())
    if PACKAGE in sys.modules:
        os.environ.setdefault(PROTOBUF_ENV, "python")
    if REGISTER_MODULE in sys.modules:
        register_now()
