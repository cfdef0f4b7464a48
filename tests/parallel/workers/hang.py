"""Worker: rank 1 never joins the collective; rank 0 must fail within the timeout with a line naming itself.

usage: hang.py TIMEOUT_S
"""

import sys
import time

import torch

from shoal.errors import TrainingError
from shoal.parallel.group import all_reduce_mean, collective_errors, destroy_process_group, init_process_group

timeout_s = float(sys.argv[1])
info = init_process_group(torch.device("cpu"), timeout_s)
if info.rank == 1:
    time.sleep(timeout_s + 5)  # stuck (in data loading, a deadlock, ...) while rank 0 waits in the all-reduce
else:
    start = time.monotonic()
    try:
        with collective_errors(timeout_s):
            all_reduce_mean(torch.ones(1))
    except TrainingError as e:
        print(f"after {time.monotonic() - start:.1f} s: {e}")
destroy_process_group()
