"""``python -m xsearch.cli ...`` (what :mod:`xsearch.grid` runs): the ``xsearch`` command."""
from xsearch.cli import main

raise SystemExit(main())
