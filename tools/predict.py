"""`ovdet predict` as a script: `python tools/predict.py --help`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
