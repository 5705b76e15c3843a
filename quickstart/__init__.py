"""The quickstart: `scripts/run` runs the whole edge story on one machine (see README.md)."""
