#!/usr/bin/env bash
# Retake the dashboard screenshots in docs/images (dashboard-*.png): runs the dashboard's browser
# tests (real agents, broker, registry, podman; Chromium headless) with EDGE_SCREENSHOTS_DIR set,
# so the tests copy what they took into docs/images. The tests alone never write into the repo.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
. scripts/install-deps.sh
export EDGE_SCREENSHOTS_DIR="$repo/docs/images"
python -m pytest tests/integration/dashboard -p no:cacheprovider -q "$@"
ls -l docs/images/dashboard-*.png
