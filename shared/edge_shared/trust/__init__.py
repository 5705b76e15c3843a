"""Signature, key, registry and platform formats both sides read and write."""
