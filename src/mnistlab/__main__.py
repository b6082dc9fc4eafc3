"""``python -m mnistlab`` (and ``torchrun -m mnistlab``) run the CLI."""

import sys

from .cli import main

sys.exit(main())
