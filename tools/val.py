"""`ovdet val` as a script: `python tools/val.py --help`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["val", *sys.argv[1:]]))
