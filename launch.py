#!/usr/bin/env python3
"""The one entry point of ddp_scratch: `python launch.py --help`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ddp_scratch.cli.main import main  # noqa: E402  (path set up first; imports no numpy)

if __name__ == "__main__":
    sys.exit(main())
