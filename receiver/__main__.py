"""`python -m receiver` is the same as the `llm-log-analyzer` command."""

import sys

from receiver.cli import main

sys.exit(main())
