"""``python -m flownar.train``: train one system (what the DeepSpeed launcher runs on every rank)."""

import sys

from .launch import main

sys.exit(main())
