"""``python -m api`` is the ``branchpay`` command."""

from api.cli import main

# Guarded: `serve --workers N` spawns its workers, and a spawned worker imports this module.
if __name__ == "__main__":
    main()
