"""`ovdet export` as a script: `python tools/export.py --help`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
