"""``python -m ovdet``: the ``ovdet`` command, runnable where console scripts are not
(``torchrun --nproc_per_node 2 -m ovdet train ...``)."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main())
