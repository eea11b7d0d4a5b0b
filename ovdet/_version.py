"""The package version (one home: ``setup.cfg`` and checkpoints read it from here)."""

__version__ = "0.1.0"
