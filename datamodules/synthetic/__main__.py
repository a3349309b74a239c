"""``python -m datamodules.synthetic export ...``: see :mod:`datamodules.synthetic.export`."""

import sys

from datamodules.synthetic.export import main

if __name__ == "__main__":
    sys.exit(main())
