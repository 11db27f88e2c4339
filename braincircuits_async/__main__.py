"""``python -m braincircuits_async``: the same as the ``braincircuits-async`` command."""

import sys

from ._cli import main

sys.exit(main())
