"""`python -m fewstep` and `accelerate launch -m fewstep` entry point."""

from fewstep.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
