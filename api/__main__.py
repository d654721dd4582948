"""``python -m api`` is the ``branchpay`` command."""

from api.cli import main

main()
