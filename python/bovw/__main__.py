"""``python -m bovw`` is the ``bovw`` command."""

import sys

from bovw.cli import main

sys.exit(main())
