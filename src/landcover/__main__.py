"""`python -m landcover` runs the command line."""

import sys

from landcover.cli import main

sys.exit(main())
