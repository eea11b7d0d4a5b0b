"""`ovdet embed` as a script: `python tools/embed.py --help`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
