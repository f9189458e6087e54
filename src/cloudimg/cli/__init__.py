"""The ``cloudimg`` command line."""
