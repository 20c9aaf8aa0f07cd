"""The study with 3 seeds per row: tasks 0-4 fine-tuned (the faithful mode, no search), from an empty artifacts folder.

Issue 20's budget for the uncertainty a figure should carry: every row of tasks 0-4 trained as the study did, with
3 seeds, within 60 minutes on the 2-core CI machine. It is ``bench/reproduce.py --mode faithful --repeats 3
--trials 0`` under its own name, so its results sit beside the one-seed reproduction's instead of replacing them.

    python -m bench.repeats [--tiny] [--repeats 3] [--image-size 128] [--keep DIR]
"""

from __future__ import annotations

import sys
from typing import Any

from bench import reproduce

DEFAULTS = ["--mode", "faithful", "--repeats", "3", "--trials", "0"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    return reproduce.main([*DEFAULTS, *argv], name="repeats")  # later arguments win (argparse)


if __name__ == "__main__":
    main()
