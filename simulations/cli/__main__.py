"""``python -m simulations.cli``: the ``fedmodel`` command."""

import sys

from simulations.cli import main

sys.exit(main())
