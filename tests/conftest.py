import os

import torch

# Test problems are tiny: one thread avoids OpenMP oversubscription, which makes small ops on a
# busy 2-core machine up to 10x slower. FLYT_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("FLYT_TEST_THREADS", "1")))
