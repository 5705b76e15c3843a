"""Container runtime adapters: the Protocol the deployment executor uses, Podman and a fake."""
