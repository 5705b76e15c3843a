"""Training in the core (needs the ``train`` extra: torch, onnx). Never imported on the device."""
