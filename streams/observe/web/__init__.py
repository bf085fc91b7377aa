"""Pages of the worker's web server (Faust's own, WORKER_WEB_PORT, default 6066).

- `/metrics`: Prometheus text format (streams/observe/metrics.py defines every name).
- `/dashboard`: a live page, plain HTML/CSS/JS (`dashboard.html`, no build step),
  polling `/dashboard.json` every 2 s.
- `/dashboard.json`: the figures the page shows.

Each request refreshes the figures read from PostgreSQL, Redis and Kafka
(at most once a second, `streams.observe.monitor`); until the worker has connected,
the pages answer 503.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson
from prometheus_client import disable_created_metrics

from streams.observe.metrics import CONTENT_TYPE, render
from streams.observe.monitor import Monitor

NO_STORE = {"Cache-Control": "no-store"}


@cache
def dashboard_html() -> str:
    return (resources.files("streams.observe.web") / "dashboard.html").read_text("utf-8")


def _monitor(app: Any) -> Monitor | None:
    return getattr(app, "observer", None)


def install(app: Any) -> None:
    """Register the pages on the Faust app `app`."""
    # `*_created` series would double /metrics and say nothing here (untyped upstream).
    disable_created_metrics()  # type: ignore[no-untyped-call]

    async def metrics(self: Any, request: Any) -> Any:
        monitor = _monitor(app)
        if monitor is None:
            return self.text("worker starting\n", status=503)
        await monitor.refresh()
        return self.bytes(render(), headers={"Content-Type": CONTENT_TYPE, **NO_STORE})

    async def dashboard(self: Any, request: Any) -> Any:
        return self.html(dashboard_html(), headers=NO_STORE)

    async def dashboard_json(self: Any, request: Any) -> Any:
        monitor = _monitor(app)
        if monitor is None:
            return self.bytes(
                b'{"starting": true}', status=503, headers={"Content-Type": "application/json"}
            )
        body = orjson.dumps(await monitor.dashboard(), option=orjson.OPT_NON_STR_KEYS)
        return self.bytes(body, headers={"Content-Type": "application/json", **NO_STORE})

    app.page("/metrics")(metrics)
    app.page("/dashboard")(dashboard)
    app.page("/dashboard.json")(dashboard_json)
