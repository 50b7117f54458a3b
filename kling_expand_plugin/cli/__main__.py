"""`python -m kling_expand_plugin.cli`: the `kling-expand` command."""

import sys

from . import main

sys.exit(main())
