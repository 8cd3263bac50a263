"""``python -m nemodiff_jax`` is the ``nemodiff`` command."""

import sys

from .cli import main

sys.exit(main())
