"""The ``molphenix`` command line (``molphenix.cli.main:app``)."""
