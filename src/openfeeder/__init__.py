"""OpenFeeder: an open distribution automation platform."""

from openfeeder.errors import OpenFeederError

__all__ = ["OpenFeederError", "__version__"]

__version__ = "0.1.0"
