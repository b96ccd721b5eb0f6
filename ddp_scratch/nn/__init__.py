"""The math: forward/backward pairs side by side, the flat parameter space, layers, the MLP and
the GPT, optimizers on the flat buffers, and the model registry. No MPI, no files."""
