"""The dashboard's routes: each page (fleet, device, rollouts, one rollout, A/B compare) as a whole
page and as the fragment the page's script swaps in when a server-sent event says its data
changed (/events). GET only: the dashboard changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgectl import __version__
from edgectl.dashboard import views
from edgectl.dashboard.feed import KINDS, FleetFeed
from edgectl.dashboard.security import Guard, allowed_hosts

HERE = Path(__file__).parent
# Server-sent events: at most one per this many seconds per page (changes in between are
# coalesced: the page fetches the newest state), and a comment line to keep proxies from
# closing an idle stream.
MIN_EVENT_GAP_S = 0.2
KEEPALIVE_S = 15.0
COMPARE_WINDOW_S = 300.0


def templates() -> Environment:
    # autoescape on for every template: whatever a device reports is escaped where it is written.
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals["version"] = __version__
    return env


class Dashboard:
    def __init__(self, feed: FleetFeed, *, compare_groups: list[str] | None = None, title: str = "") -> None:
        self.feed = feed
        self.env = templates()
        self.compare_groups = compare_groups or []
        self.title = title

    # ---- helpers

    def _render(self, request: Request, name: str, context: dict[str, Any], *, fragment_of: str,
                watch: tuple[str, ...]) -> HTMLResponse:
        fragment = request.query_params.get("fragment") == "1"
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "fragment"]
        context = {
            **context, "feed": self.feed, "title": self.title, "now": time.time(),
            "revisions": self.feed.revisions, "watch": ",".join(watch),
            "fragment_url": fragment_of + "?" + urlencode([*query, ("fragment", "1")]),
            "broker": {"connected": self.feed.connected, "error": self.feed.broker_error,
                       "since": views.ago(self.feed.broker_since, time.time()) if self.feed.broker_since else ""},
        }
        template = self.env.get_template(name)
        if fragment:
            html = "".join(template.blocks["content"](template.new_context(context)))
        else:
            html = template.render(context)
        return HTMLResponse(html)

    async def _ready(self) -> None:
        # The first page waits (briefly) for the first full read of the broker.
        if not self.feed.ready.is_set():
            try:
                async with asyncio.timeout(10):
                    await self.feed.ready.wait()
            except TimeoutError:
                pass

    # ---- pages

    async def fleet(self, request: Request) -> Response:
        from edge_shared.labels import LabelError, parse_selector

        await self._ready()
        q = request.query_params
        selector_text = q.get("selector", "").strip()
        selector, error = None, ""
        if selector_text:
            try:
                selector = parse_selector(selector_text)
            except LabelError as exc:
                error = f"selector: {exc}"
        page = views.fleet_page(
            self.feed.views(), time.time(), selector=selector, selector_text=selector_text, search=q.get("q", ""),
            sort=q.get("sort", "device"), descending=q.get("desc") == "1", error=error,
            attention=q.get("attention") == "1",
        )
        return self._render(request, "fleet.html", {"page": page, "nav": "fleet", "sort_keys": views.SORT_KEYS},
                            fragment_of="/", watch=("fleet",))

    async def device(self, request: Request) -> Response:
        await self._ready()
        device = request.path_params["device"]
        view = self.feed.view(device)
        enrollment = await asyncio.to_thread(self.feed.read_enrollment, device) if self.feed.known(device) else None
        page = views.device_page(view, time.time(), self.feed.telemetry.samples(device),
                                 self.feed.telemetry.path(device), enrollment)
        response = self._render(request, "device.html", {"page": page, "nav": "fleet", "device": device},
                                fragment_of=f"/device/{device}", watch=("fleet", "telemetry"))
        if not page.found:
            response.status_code = 404
        return response

    async def rollouts(self, request: Request) -> Response:
        found = await asyncio.to_thread(self.feed.read_rollouts)
        rows = views.rollout_list(found) if not isinstance(found, str) else []
        return self._render(request, "rollouts.html", {
            "rows": rows, "problem": found if isinstance(found, str) else "", "nav": "rollouts",
            "state_path": str(self.feed.rollout_state or ""),
        }, fragment_of="/rollouts", watch=("rollouts",))

    async def rollout(self, request: Request) -> Response:
        rollout_id = request.path_params["rollout"]
        found = await asyncio.to_thread(self.feed.read_rollout, rollout_id)
        page = None if isinstance(found, str) else views.rollout_page(*found[:3], time.time(), owner_alive=found[3])
        response = self._render(request, "rollout.html", {
            "page": page, "problem": found if isinstance(found, str) else "", "nav": "rollouts",
            "rollout_id": rollout_id,
        }, fragment_of=f"/rollouts/{rollout_id}", watch=("rollouts",))
        if page is None:
            response.status_code = 404
        return response

    async def compare(self, request: Request) -> Response:
        from edge_shared.labels import reported_labels
        from edgectl.compare import DEFAULT_METRICS, compare, render_table
        from edgectl.compare_cmd import assign_groups, parse_groups
        from edgectl.dashboard.charts import compare_bars

        await self._ready()
        specs = [g for g in request.query_params.getlist("group") if g.strip()] or self.compare_groups
        try:
            window = float(request.query_params.get("window", COMPARE_WINDOW_S))
        except ValueError:
            window = COMPARE_WINDOW_S
        window = min(max(window, 10.0), 3600.0)
        context: dict[str, Any] = {"nav": "compare", "specs": specs, "window": window, "problem": "",
                                   "comparison": None, "bars": [], "table": ""}
        if specs:
            try:
                selectors = parse_groups(specs)
                views_now = self.feed.views()
                group_of = assign_groups(
                    {v.device: reported_labels((v.reported or {}).get("device")) for v in views_now}, selectors
                )
                comparison = compare(self.feed.telemetry.records(time.time() - window), group_of,
                                     list(DEFAULT_METRICS), groups=list(selectors))
                shown = {s.partition("=")[0]: s.partition("=")[2] for s in specs}
                context.update(comparison=comparison, bars=compare_bars(comparison),
                               table=render_table(comparison, shown), selectors=shown,
                               members={name: sorted(d for d, g in group_of.items() if g == name)
                                        for name in selectors})
            except ValueError as exc:
                context["problem"] = str(exc)
        return self._render(request, "compare.html", context, fragment_of="/compare", watch=("telemetry", "fleet"))

    async def events(self, request: Request) -> Response:
        kinds = tuple(k for k in request.query_params.get("watch", "fleet").split(",") if k in KINDS) or ("fleet",)

        async def stream() -> AsyncIterator[str]:
            seen: dict[str, int] = {}
            last_send = 0.0
            while not await request.is_disconnected():
                now = dict(self.feed.revisions)
                if any(now[k] != seen.get(k) for k in kinds):
                    gap = MIN_EVENT_GAP_S - (time.monotonic() - last_send)
                    if gap > 0:
                        await asyncio.sleep(gap)
                        now = dict(self.feed.revisions)
                    seen = now
                    last_send = time.monotonic()
                    yield f"event: change\ndata: {json.dumps({k: now[k] for k in kinds})}\n\n"
                    continue
                after = await self.feed.wait_change(seen, kinds, KEEPALIVE_S)
                if after == seen:
                    yield ": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})


def create_app(
    feed: FleetFeed, *, token: str | None = None, bind: str = "127.0.0.1", tls: bool = False,
    extra_hosts: tuple[str, ...] = (), compare_groups: list[str] | None = None, run_feed: bool = True,
) -> Any:
    board = Dashboard(feed, compare_groups=compare_groups)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(feed.run()) if run_feed else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                    await task

    app = Starlette(
        routes=[
            Route("/", board.fleet),
            Route("/device/{device}", board.device),
            Route("/rollouts", board.rollouts),
            Route("/rollouts/{rollout}", board.rollout),
            Route("/compare", board.compare),
            Route("/events", board.events),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        lifespan=lifespan,
    )
    return Guard(app, token=token, hosts=allowed_hosts(bind, extra_hosts), tls=tls)
