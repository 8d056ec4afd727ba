"""`python -m progan_cli` runs the same app as the `progan` console script."""

from progan_cli.cli.app import main

main()
