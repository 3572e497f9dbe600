"""The package version, in one place (the safetensors sidecar records it)."""

__version__ = "0.1.0"
