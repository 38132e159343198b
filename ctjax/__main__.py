"""`python -m ctjax ...` is the `ctjax` command (train, eval, sample, plot)."""

import sys

from ctjax.experiments import main


if __name__ == "__main__":
    sys.exit(main())
