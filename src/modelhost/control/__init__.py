"""The control plane: what should be served (state store) and making it so (controller)."""
