"""``python -m agent``: the ``pgt`` command."""

from pgt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
