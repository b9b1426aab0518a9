"""`python -m chipaudit` is the same as the `chipaudit` command."""

from chipaudit.cli import main

main()
