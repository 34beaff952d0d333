"""The gateway: one port for the registry, the serving control API and every served model."""
