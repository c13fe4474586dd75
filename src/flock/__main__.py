"""`python -m flock`: the `flock` command (whose name util-linux's /usr/bin/flock shares)."""

from flock.cli import main

main()
