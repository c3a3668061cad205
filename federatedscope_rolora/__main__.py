"""``python -m federatedscope_rolora`` is the ``federatedscope-rolora``
command."""

import sys

from federatedscope_rolora.cli import main

sys.exit(main())
