"""edge-pilot: ONNX steering of a DonkeyCar-class car, trained in the core, hot-swapped on the device."""

import os as _os

# ONNX Runtime >= 1.29 ships opt-out usage telemetry on Linux; a car must not phone home.
# Both spellings, set before onnxruntime is first imported (the decision is latched at init).
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("ORT_TELEMETRY_DISABLED", "1")

__version__ = "0.1.0"

FRAME_WIDTH = 160
FRAME_HEIGHT = 120
