"""`python -m pipeline.export`: the `litevae` command (pipeline/export/cli.py)."""

from pipeline.export.cli import main

raise SystemExit(main())
