"""The agent's A/B self-update, agent side: install a signed release beside the running one, ask
the systemd-level guard (systemd/edge-agent-update-guard) to switch to it, and confirm it from the
new version once it proved healthy. docs/operations.md, "Agent updates", has the whole picture."""
