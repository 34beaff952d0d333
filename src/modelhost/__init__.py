"""modelhost: self-hosted model serving for MLflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelhost")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
