"""The ``comem`` command: a thin layer over the importable library functions.

One module per command (or command group) declares its flags (``register``) and a
``cmd_*`` function that calls the library; :mod:`comem.cli.args` holds the argument
types, :mod:`comem.cli.fields` the flags generated from a config model's fields,
:mod:`comem.cli.common` the helpers they share, :mod:`comem.cli.app` the parser and
``main``. Every user error (bad name, bad number, missing file) ends as one line on
stderr and exit code 2, never a traceback.
"""

from comem.cli.app import build_parser, main
from comem.cli.figures import QUICK_FIGURES_DIR

__all__ = ["QUICK_FIGURES_DIR", "build_parser", "main"]
