"""trainlab: a config-driven experiment runner for PyTorch."""

import time

__version__ = "0.1.0"

# The earliest moment trainlab's code runs in this process: the loop reports its first step
# relative to it (start-up: imports, data, model).
STARTED = time.perf_counter()
