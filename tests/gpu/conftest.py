"""GPU checks: collected only where CUDA is available, so a CPU run neither runs nor skips them."""

import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
