"""Small Meta-World datasets shared by the demo tests (built once per session, 32x32 images)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path

import pytest

from craft_plugin.demo.metaworld_data import RenderOptions

RENDER = RenderOptions(image_size=32, max_steps=120, steps_after_success=4)


@pytest.fixture(scope="session")
def render() -> RenderOptions:
    return RENDER


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def push_sets(demo_cache: Path):
    from craft_plugin.demo.metaworld_data import task_datasets

    return task_datasets("push-v3", 2, 1, demo_cache, render=RENDER, progress=False)


@pytest.fixture(scope="session")
def reach_sets(demo_cache: Path):
    from craft_plugin.demo.metaworld_data import task_datasets

    return task_datasets("reach-v3", 2, 1, demo_cache, render=RENDER, progress=False)
