"""``python -m rao_jax.report``."""

import sys

from rao_jax.report import main

sys.exit(main())
