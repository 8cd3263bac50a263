"""``python -m nemodiff_jax.cli``: the same front door as ``nemodiff``."""

import sys

from . import main

sys.exit(main())
