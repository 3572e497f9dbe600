"""The ``lightnets`` command: argument wiring only; every command calls the library's typed functions."""

from lightnets.cli.main import main

__all__ = ["main"]
