"""cloudimg: a registry for virtual-machine disk images."""

__version__ = "0.1.0"
