"""DonkeyCar tub v2 data sets: write (simulator recordings) and read (training, replay camera).

Layout, as DonkeyCar writes it: ``manifest.json`` (five JSON lines: input names, types,
metadata, manifest metadata, and the catalog list with deleted indexes), ``catalog_N.catalog``
(one JSON record per line), and ``images/{i}_cam_image_array_.jpg``. Written here by hand
because DonkeyCar itself pulls in TensorFlow/Keras; the format is small and stable."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode"]
TYPES = ["image_array", "float", "float", "str"]
CATALOG_LEN = 1000


class TubError(Exception):
    pass


@dataclass(frozen=True)
class TubRecord:
    index: int
    image_path: Path
    angle: float
    throttle: float
    timestamp_ms: int
    extra: dict[str, Any]

    def image(self) -> np.ndarray:
        img = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if img is None:
            raise TubError(f"{self.image_path}: unreadable image")
        return img


class TubWriter:
    def __init__(self, path: Path, metadata: dict[str, Any] | None = None, jpeg_quality: int = 95, session: str | None = None):
        self.path = Path(path)
        (self.path / "images").mkdir(parents=True, exist_ok=True)
        self.metadata = metadata or {}
        self.quality = jpeg_quality
        self.index = 0
        self.session = session or f"session_{int(time.time())}"
        self._catalogs: list[str] = []
        self._fh: Any = None

    def write(self, image_bgr: np.ndarray, angle: float, throttle: float, timestamp_ms: int, mode: str = "user",
              extra: dict[str, Any] | None = None) -> None:
        cat = self.index // CATALOG_LEN
        name = f"catalog_{cat}.catalog"
        if not self._catalogs or self._catalogs[-1] != name:
            if self._fh:
                self._fh.close()
            self._catalogs.append(name)
            self._fh = open(self.path / name, "w", encoding="utf-8")
        img_name = f"{self.index}_cam_image_array_.jpg"
        ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise TubError("jpeg encode failed")
        (self.path / "images" / img_name).write_bytes(buf.tobytes())
        rec = {"_index": self.index, "_session_id": self.session, "_timestamp_ms": int(timestamp_ms), "cam/image_array": img_name,
               "user/angle": round(float(angle), 6), "user/throttle": round(float(throttle), 6), "user/mode": mode}
        rec.update(extra or {})
        self._fh.write(json.dumps(rec, sort_keys=True) + "\n")
        self.index += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None
        lines = [INPUTS, TYPES, self.metadata, {"created_at": 0, "sessions": {"last_id": 0, "all_full_ids": [self.session]}},
                 {"paths": self._catalogs, "current_index": self.index, "max_len": CATALOG_LEN, "deleted_indexes": []}]
        (self.path / "manifest.json").write_text("\n".join(json.dumps(x, sort_keys=True) for x in lines) + "\n", encoding="utf-8")

    def __enter__(self) -> TubWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: Path) -> dict[str, Any]:
    mf = Path(path) / "manifest.json"
    try:
        lines = [json.loads(x) for x in mf.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise TubError(f"{mf}: not a tub v2 manifest ({e})") from e
    if len(lines) < 5 or "paths" not in lines[4]:
        raise TubError(f"{mf}: expected 5 JSON lines with 'paths' in the last")
    return {"inputs": lines[0], "types": lines[1], "metadata": lines[2], "manifest": lines[4]}


def read_tub(path: Path) -> Iterator[TubRecord]:
    path = Path(path)
    man = read_manifest(path)["manifest"]
    deleted = set(man.get("deleted_indexes", []))
    for cat in man["paths"]:
        with open(path / cat, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    idx = int(r["_index"])
                    rec = TubRecord(idx, path / "images" / r["cam/image_array"], float(r["user/angle"]), float(r["user/throttle"]),
                                    int(r.get("_timestamp_ms", 0)), {k: v for k, v in r.items() if k.startswith("sim/")})
                except (KeyError, ValueError, TypeError) as e:
                    raise TubError(f"{path / cat}:{n}: bad record ({e})") from e
                if idx not in deleted:
                    yield rec


def tub_hash(path: Path) -> str:
    """sha256 over the records' content (index, angle, throttle, mode, image bytes) in order.

    Identifies the training data independent of session ids and wall-clock timestamps, so the
    same simulator seed gives the same hash on every machine."""
    h = hashlib.sha256()
    for r in read_tub(path):
        h.update(json.dumps([r.index, r.angle, r.throttle], separators=(",", ":")).encode() + b"\0")
        h.update(r.image_path.read_bytes())
    return "sha256:" + h.hexdigest()
