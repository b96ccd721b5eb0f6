"""ddp_scratch: neural networks from scratch (NumPy / CuPy, hand-written backward passes),
trained data-parallel with MPI. Importing the package imports no numerical library, so the
launcher can set thread counts first."""
__version__ = "0.1.0"
