import sys

from .cli import main

if __name__ == "__main__":  # guarded: spawned processes (the serving engine process) import this module again
    sys.exit(main())
