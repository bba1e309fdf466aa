"""`python -m rolebake`."""

from rolebake.cli import main

main()
