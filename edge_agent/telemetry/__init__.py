"""Store-and-forward telemetry: per-module ingest sockets, a SQLite queue, an MQTT uplink."""
