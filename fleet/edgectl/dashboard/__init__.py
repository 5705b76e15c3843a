"""`edgectl dashboard`: a live, read-only web page of the fleet, built from the data edgectl reads
(the broker's retained desired/reported/presence messages through FleetClient, the rollout state
file through RolloutStore, pilot telemetry as `edgectl telemetry`/`compare` receive it).

Why this stack: Starlette (ASGI routing, streaming responses for server-sent events), uvicorn (its
server) and Jinja2 (templates with autoescape on, so every string a device reports is escaped
where it is written) are small, widely used and kept, and installable from PyPI alone. The page
needs no client framework: one static script (static/dashboard.js) listens to server-sent events
and swaps in the fragment the server rendered. Charts are SVG drawn on the server (charts.py):
nothing is fetched from a CDN (the fleet machine may be offline), no chart library is shipped,
and the Content-Security-Policy can forbid every inline script and style.

Files: feed.py (the live data: broker, telemetry, rollout file), telemetry_buffer.py (recent
pilot samples per device), views.py (pure: what each page shows), charts.py (pure: SVG),
security.py (headers, token, bind rules), app.py (routes), command.py (the CLI).
"""
