"""The ``molphenix`` command line: the app in :mod:`molphenix.cli.main`, one module per command
family (``data.py``: simulate / call-activity, ``bench.py``, ...), and the error reporting every
command shares in :mod:`molphenix.cli._errors` (``usage_error``, ``data_error``,
``threads_option``)."""
