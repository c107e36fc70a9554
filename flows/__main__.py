"""``python -m flows`` is the ``synthaug`` command."""

from flows.cli import main

main()
