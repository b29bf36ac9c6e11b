"""The ``tandem`` command line (Typer): :mod:`api.cli.main` holds the app, one module per command group."""
