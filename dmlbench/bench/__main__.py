"""python -m dmlbench.bench losses [options]"""

import sys

from .cli import main

sys.exit(main())
