"""Diagnose a device from a desk or at the roadside: health figures (health.py), remote logs
(logs_service.py), the support bundle (bundle.py)."""
