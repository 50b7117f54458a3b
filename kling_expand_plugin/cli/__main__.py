"""`python -m kling_expand_plugin.cli`: the `kling-expand` command."""

import sys

from kling_expand_plugin.cli import main

sys.exit(main())
