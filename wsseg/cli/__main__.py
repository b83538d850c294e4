"""`python -m wsseg.cli`: the `wsseg` command."""

import sys

from wsseg.cli import main

sys.exit(main())
