"""edge-pilot: ONNX steering of a DonkeyCar-class car, trained in the core, hot-swapped on the device."""

__version__ = "0.1.0"

FRAME_WIDTH = 160
FRAME_HEIGHT = 120
