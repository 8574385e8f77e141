"""Evaluate an ovs model on several datasets: ``python tools/eval.py --config NAME --datasets ade150,pc59,voc20``."""

import sys

from ovs.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
