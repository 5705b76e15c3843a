"""The stored deployment names each artifact by digest (pure)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def pin_artifact_refs(document: Mapping[str, Any], pins: Mapping[tuple[str, int], str]) -> dict[str, Any]:
    """A copy of the deployment document with `modules.<m>.artifacts[i].ref` replaced by the
    pinned reference (registry/repo[:tag]@sha256:...): what the reconciler places is exactly what
    was verified, also after a restart with no network. With no artifact there is nothing to
    replace: the copy is shallow (the gate's parsed document, which nothing else holds, is not
    copied through again for every accepted document)."""
    out = copy.deepcopy(dict(document)) if pins else dict(document)
    for (module, index), pinned in pins.items():
        out["modules"][module]["artifacts"][index]["ref"] = pinned
    return out
