"""``python -m comem.cli`` runs the CLI, as ``python -m comem`` does."""

import sys

from comem.cli import main

sys.exit(main())
