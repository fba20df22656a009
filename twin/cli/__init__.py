"""`twin`: the command line, a thin skin over the Python API; one module per group of verbs."""

from twin.cli.main import main

__all__ = ["main"]
