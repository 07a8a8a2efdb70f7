"""`python -m transformer ...` is the `transformer` command (also `python -m transformer.cli`)."""

import sys

from transformer.cli import main

sys.exit(main())
