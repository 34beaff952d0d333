"""Shipped with a model through code_paths: which version of a module the model imports."""

import importlib


def imported_version(module: str) -> str:
    return importlib.import_module(module).__version__
