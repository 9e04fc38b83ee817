"""`python -m node --config FILE [--ready-file PATH]`, the same as `gitedge node`."""

import sys

from node.app import main

sys.exit(main())
