"""A training run: the one loop (trainer.py), checkpoints, the progress display, the timeline
of every rank (trace.py), and sampling from a trained GPT."""
