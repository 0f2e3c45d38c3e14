"""``python -m tidings``: the same as the ``tidings`` command."""

from .cli import main

if __name__ == "__main__":
    main()
