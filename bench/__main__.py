"""``python -m bench``: the configuration sweep (see ``bench.sweep``)."""

from bench.sweep import main

if __name__ == "__main__":
    raise SystemExit(main())
