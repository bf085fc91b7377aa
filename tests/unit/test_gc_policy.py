"""The worker's collector settings after start (streams/worker/gc_policy.py)."""

from __future__ import annotations

import gc

from streams.worker.gc_policy import YOUNG_THRESHOLD, settle_after_start


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        settle_after_start()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
