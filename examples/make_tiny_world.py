"""Write a tiny LeRobot world to a folder, offline: a dataset and a random-weight ACT teacher.

    python examples/make_tiny_world.py /tmp/craft-world
    craft build-cache --policy.path=/tmp/craft-world/act --dataset.root=/tmp/craft-world/data \
        --dataset.repo_id=local/tiny --output-dir=/tmp/craft-world/cache --num-anchors=12 --batch-size=4 --shard-size=5

The dataset (2 episodes x 12 frames, one 64x64 camera, 4-d state and action) is written with
`LeRobotDataset.create`; the teacher is a tiny ACT built from a config (no download) and saved
as a LeRobot `pretrained_model` folder. Both come from the test suite's builders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.tiny_classic import make_tiny_act  # noqa: E402
from support.tiny_dataset import make_dataset, save_policy  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    args = p.parse_args()
    if args.folder.exists() and any(args.folder.iterdir()):
        p.error(f"{args.folder} exists and is not empty")
    make_dataset(args.folder / "data")
    save_policy(*make_tiny_act(seed=0), args.folder / "act")
    print(f"dataset: {args.folder / 'data'}\nteacher: {args.folder / 'act'}")


if __name__ == "__main__":
    main()
