"""`python -m mage ...` = the `mage-studio` command line."""
import sys

from .cli import main

sys.exit(main())
