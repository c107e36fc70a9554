"""``python -m synthaug`` is the ``synthaug`` command."""

from synthaug.flows.cli import main

main()
