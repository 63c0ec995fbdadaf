"""``python -m trioflow``: the command line."""

from trioflow.cli import main

main()
