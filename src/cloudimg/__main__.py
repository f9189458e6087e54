"""Allow ``python -m cloudimg``."""

from cloudimg.cli.main import main

main()
