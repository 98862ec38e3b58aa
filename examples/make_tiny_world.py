"""Write a tiny LeRobot world to a folder, offline: a dataset and a random-weight ACT teacher.

    python examples/make_tiny_world.py /tmp/craft-world
    craft build-cache --policy.path=/tmp/craft-world/act --dataset.root=/tmp/craft-world/data \
        --dataset.repo_id=local/tiny --output-dir=/tmp/craft-world/cache --num-anchors=12 --batch-size=4 --shard-size=5

The dataset (2 episodes x 12 frames, one 64x64 camera, 4-d state and action) is written with
`LeRobotDataset.create`; the teacher is a tiny ACT built from a config (no download) and saved
as a LeRobot `pretrained_model` folder (:mod:`craft_plugin.demo.tiny_world`, which the test
suite builds its tiny world with too).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from craft_plugin.demo.tiny_world import write_tiny_world


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    args = p.parse_args()
    if args.folder.exists() and any(args.folder.iterdir()):
        p.error(f"{args.folder} exists and is not empty")
    data, act = write_tiny_world(args.folder)
    print(f"dataset: {data}\nteacher: {act}")


if __name__ == "__main__":
    main()
