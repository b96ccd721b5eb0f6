# A package, so that this directory's conftest.py is imported as slurm.conftest and does not
# shadow tests/conftest.py, which other tests import as `conftest`.
