"""Shared fixtures for the pilot module tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from edge_pilot.hotswap import MODEL_FILE
from edge_pilot.signing import sign_model_bytes

REPO = Path(__file__).resolve().parents[2]
PILOT_DIR = REPO / "modules" / "pilot"
SHIPPED_MODEL = PILOT_DIR / "models" / "model.onnx"


@pytest.fixture(scope="session")
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def public_key_pem(tmp_path_factory: pytest.TempPathFactory, signing_key: ec.EllipticCurvePrivateKey) -> Path:
    p = tmp_path_factory.mktemp("trust") / "pilot.pub"
    p.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return p


@pytest.fixture(scope="session")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly trained second model (different weights from the shipped one)."""
    from edge_pilot.train.train import TrainConfig, run

    out = tmp_path_factory.mktemp("short_model")
    run(out, TrainConfig(frames=300, heldout_frames=100, epochs=1, seed=11), log=lambda *_: None)
    return out / "model.onnx"


def deliver(
    folder: Path, model_bytes: bytes, key: ec.EllipticCurvePrivateKey, *, sha: str | None = None, sig: str | None = None
) -> None:
    """Put a model into a models folder the way the agent does: sidecars first, model renamed in last."""
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / (MODEL_FILE + ".sha256")).write_text((sha or hashlib.sha256(model_bytes).hexdigest()) + "\n")
    (folder / (MODEL_FILE + ".sig")).write_text((sig or sign_model_bytes(model_bytes, key)) + "\n")
    tmp = folder / ".model.onnx.tmp"
    tmp.write_bytes(model_bytes)
    tmp.replace(folder / MODEL_FILE)


def container_models(tmp_path: Path, key: ec.EllipticCurvePrivateKey, public_key_pem: Path) -> Path:
    """tmp_path/models holding the shipped model, signed, readable (with the public key) by the
    container's user 10001: what a test mounts at /models."""
    models = tmp_path / "models"
    deliver(models, SHIPPED_MODEL.read_bytes(), key)
    for p in (models, *models.iterdir(), public_key_pem):
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp_path.chmod(0o755)
    return models


def copy_model(src: Path, dst_folder: Path, key: ec.EllipticCurvePrivateKey) -> None:
    deliver(dst_folder, src.read_bytes(), key)


__all__ = ["PILOT_DIR", "REPO", "SHIPPED_MODEL", "copy_model", "deliver", "shutil"]
