"""`ovdet convert` as a script: `python tools/convert.py yolov8s-worldv2.pt out_dir --trust`."""

import sys

from ovdet.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
