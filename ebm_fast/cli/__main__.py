"""``python -m ebm_fast.cli`` (and ``torchrun -m ebm_fast.cli train ...``): the ``ebm-fast`` command."""

import sys

from . import main

sys.exit(main())
