"""`python -m keras_globalpool`: the `keras-globalpool` command line."""

import sys

from keras_globalpool.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
