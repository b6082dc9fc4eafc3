"""``python -m mnistlab`` (and ``torchrun -m mnistlab``) run the CLI."""

from .cli import run

run()
