"""The simulator ("digital twin"): a kinematic car on a closed track, rendered to camera frames."""
