"""Offline scoring: a registered model over files too large for a request."""
