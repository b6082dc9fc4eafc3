"""``python -m mnistlab`` (and ``torchrun -m mnistlab``) run the CLI."""

import os
import sys

from .cli import main
from .training.distributed import launched_by_torchrun

code = main()
if launched_by_torchrun():
    # A torchrun worker has written and flushed all it writes, and left the process group. Ending here
    # skips the interpreter's teardown, where gloo's C++ objects, freed in no set order, now and then
    # aborted a finished worker ("terminate called without an active exception", SIGABRT: 1 run in
    # about 7 on the loaded 2-core CI machine), and torchrun then failed the whole run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
sys.exit(code)
