"""The long-running daemon around the engine: scheduling, health endpoints, systemd, and the
wiring of an engine from the settings."""
