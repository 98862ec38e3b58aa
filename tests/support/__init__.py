"""Builders of tiny LeRobot policies and datasets (random weights, local files, no Hub)."""
