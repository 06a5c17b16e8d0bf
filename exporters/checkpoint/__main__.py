"""`python -m hpcobs.exporters.checkpoint` = `hpcobs-checkpoint`."""

from hpcobs.exporters.checkpoint.cli import main

raise SystemExit(main())
