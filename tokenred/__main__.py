"""``python -m tokenred``: the ``tokenred`` command, for launchers that take a module.

``torchrun -m tokenred run ...`` and ``accelerate launch -m tokenred run ...`` start
every rank through this file.
"""

from __future__ import annotations

import sys

from tokenred.cli import main

if __name__ == "__main__":
    sys.exit(main())
