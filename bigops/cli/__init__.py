"""The ``bigops`` command line: one module per command group."""
