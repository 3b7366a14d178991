"""``python -m aiospaces``: the ``aiospaces`` command line (see :mod:`aiospaces._cli`)."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
