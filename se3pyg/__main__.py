"""``python -m se3pyg`` (and ``torchrun -m se3pyg``) runs the CLI."""

from se3pyg.cli import main

if __name__ == "__main__":
    main()
