"""How the worker's Python garbage collector runs once the worker has started.

Measured (`rpcache bench --quick --only throughput`, a `gc.callbacks` timer in
the worker, 2026-12-04): with CPython's defaults the collector took 0.54–0.65 s
of the worker's ~3.5 s of CPU for 20 000 events (15–18 %), in 512–644
young, 47–59 middle and 4–5 full collections. The worker holds ~140 000
long-lived objects from start-up (Faust, aiokafka, pydantic's schemas, the
app's modules) that every older collection walks again although none of
them ever becomes garbage, and the pipeline allocates several objects per
event (models, rows, ops), so young collections run every 700 allocations.

So, once the first partition assignment is done (the app and its
connections are built):

- `gc.freeze()` moves everything alive into the permanent generation, which
  no collection walks (Python docs, `gc.freeze`: "Freeze all the objects
  tracked by gc … ignore them for all future collections"); after a
  `gc.collect()`, so that start-up garbage is not frozen with them;
- the young-generation threshold goes from 700 to `YOUNG_THRESHOLD`, so a
  batch of 1 000 events no longer pays for several young collections; cycles
  are still found, only later, and a batch's objects die with it.

Nothing here changes what is collected, only when, and the frozen objects
are the ones that live as long as the process anyway.
"""

from __future__ import annotations

import gc
from typing import Final

YOUNG_THRESHOLD: Final = 50_000
"""Allocations (minus deallocations) between young collections (CPython's default: 700)."""


def settle_after_start() -> None:
    """Collect start-up garbage, freeze what is left, collect the young generation less
    often (module docstring)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
