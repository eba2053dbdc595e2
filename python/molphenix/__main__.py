"""``python -m molphenix ...`` runs the ``molphenix`` command."""

from molphenix.cli.main import main

raise SystemExit(main())
