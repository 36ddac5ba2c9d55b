"""``python -m pubtasks stats``."""

from pubtasks.cli import main

raise SystemExit(main())
