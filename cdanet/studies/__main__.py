"""``python -m cdanet.studies``: see :mod:`cdanet.studies.cli`."""

import sys

from cdanet.studies.cli import main

sys.exit(main())
