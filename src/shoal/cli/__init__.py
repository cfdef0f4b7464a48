"""The `shoal` command: parses arguments and calls the modules, nothing more. One module per family of commands;
importing them registers their commands on the app, in the order `shoal --help` lists them."""

import importlib

from shoal.cli.app import app, main

for _family in ("training", "evaluating", "serving", "compressing", "registry"):
    importlib.import_module(f"shoal.cli.{_family}")

__all__ = ["app", "main"]
