"""vfio-scenario: a declarative test engine for Linux VFIO."""

__version__ = "0.1.0"
