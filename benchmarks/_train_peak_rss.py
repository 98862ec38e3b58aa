"""Runs LeRobot's own train entry point (what `lerobot-train` runs) in this process, then prints
this process's peak resident memory: ``PEAK_RSS_MB <value>`` (and ``PEAK_CUDA_MB <value>``, the
peak of ``torch.cuda.max_memory_allocated``, when CUDA was used). Used by step_overhead.py and
full_size.py."""

import resource
import sys

if __name__ == "__main__":
    sys.argv = ["lerobot-train", *sys.argv[1:]]
    from lerobot.scripts.lerobot_train import main

    main()
    print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        print(f"PEAK_CUDA_MB {torch.cuda.max_memory_allocated() / 2**20:.1f}", flush=True)
