"""`python -m diyt predict|export ...` (see `diyt.cli`)."""

from diyt.cli import main

raise SystemExit(main())
