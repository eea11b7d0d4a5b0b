"""`ovdet check-data` as a script: `python tools/check_data.py --help`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["check-data", *sys.argv[1:]]))
