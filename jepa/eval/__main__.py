"""``python -m jepa.eval``."""
import sys

from jepa.eval.command import main

sys.exit(main())
