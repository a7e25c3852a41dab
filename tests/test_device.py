"""Where a process trains: ``device: auto`` for a process a scheduler placed (rkd.engine.device)."""

from __future__ import annotations

from rkd.engine.device import device_for_grant


def test_auto_follows_the_grant_and_explicit_devices_stay():
    assert device_for_grant("auto", []) == "cpu"  # a zero-GPU trial, even where a GPU is visible
    assert device_for_grant("auto", [0]) == "cuda" and device_for_grant("auto", ["1"]) == "cuda"
    assert device_for_grant("cpu", [0]) == "cpu" and device_for_grant("cuda:1", []) == "cuda:1"
