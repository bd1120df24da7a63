"""``python -m comem`` runs the CLI."""

import sys

from comem.cli import main

sys.exit(main())
