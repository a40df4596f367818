"""The library's version, sent to the server as the worker's build id."""

__version__ = "0.1.0"
