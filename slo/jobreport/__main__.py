"""`python -m hpcobs.slo.jobreport` = `hpcobs-job`."""

import sys

from hpcobs.slo.jobreport.cli import main

sys.exit(main())
