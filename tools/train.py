"""Fit an ovs model: ``python tools/train.py --config maskclip++_convnext_b.yaml [--trainer.max_steps=100]``."""

from ovs.cli import train_main

if __name__ == "__main__":
    train_main()
