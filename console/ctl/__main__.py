"""Runs clusterctl: ``python -m clustertui.console.ctl``."""

import sys

from clustertui.console.ctl.commands import main

sys.exit(main())
