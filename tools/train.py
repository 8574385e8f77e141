"""Fit an ovs model: ``python tools/train.py --config maskclip++_convnext_b.yaml [--trainer.max_steps=100]``."""

import sys

from ovs.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
