"""Runs LeRobot's own train entry point (what `lerobot-train` runs) in this process, then prints
this process's peak resident memory: ``PEAK_RSS_MB <value>``. Used by step_overhead.py."""

import resource
import sys

if __name__ == "__main__":
    sys.argv = ["lerobot-train", *sys.argv[1:]]
    from lerobot.scripts.lerobot_train import main

    main()
    print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}", flush=True)
