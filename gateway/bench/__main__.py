"""`python -m gateway.bench NAME [args]`: see gateway.bench.main."""

import sys

from gateway.bench import main

sys.exit(main())
