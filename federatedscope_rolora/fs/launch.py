"""``federatedscope-rolora fs-main --cfg FILE [KEY VALUE ...]``: register
the plugin and run FederatedScope's own ``main.py``, for setups where the
``.pth`` hook cannot load (a Python started with ``-S``, a site-packages
that skips ``.pth`` files, a package run from a source tree). Arguments
are FederatedScope's: ``--cfg``, ``--client_cfg`` and overrides.
"""

from __future__ import annotations

import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from federatedscope_rolora.fs.hook import PROTOBUF_ENV

EXIT_NO_FEDERATEDSCOPE = 2
EXIT_BAD_INPUT = 2


def federatedscope_main() -> Path | None:
    """FederatedScope's ``main.py``, or None if it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("federatedscope")
    if spec is None or not spec.submodule_search_locations:
        return None
    main = Path(next(iter(spec.submodule_search_locations))) / "main.py"
    return main if main.is_file() else None


def main(argv: Sequence[str]) -> int:
    """Run FederatedScope's main with the plugin registered; its exit
    status."""
    os.environ.setdefault(PROTOBUF_ENV, "python")
    main_py = federatedscope_main()
    if main_py is None:
        print("federatedscope-rolora fs-main: FederatedScope (its 'llm' "
              "branch) is not installed; see docs/federatedscope.md, or "
              "run the embedded runner: federatedscope-rolora run",
              file=sys.stderr)
        return EXIT_NO_FEDERATEDSCOPE
    from federatedscope_rolora.config import ConfigError
    from federatedscope_rolora.fs.register import register_all

    register_all()
    saved = sys.argv
    sys.argv = [str(main_py), *argv]
    try:
        runpy.run_path(str(main_py), run_name="__main__")
    except ConfigError as err:
        # As the embedded runner: one line and exit 2 (FederatedScope's
        # main.py run itself ends the same error in a traceback, exit 1).
        print(f"federatedscope-rolora fs-main: error: "
              f"{' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
