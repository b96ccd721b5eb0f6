"""A training run: the one loop (trainer.py), checkpoints, the progress display, and sampling
from a trained GPT."""
