"""``python -m diffaccel.cli`` (and ``torchrun -m diffaccel.cli``)."""
import sys

from .main import main

sys.exit(main())
