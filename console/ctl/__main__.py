"""Runs clusterctl: ``python -m console.ctl``."""

import sys

from console.ctl.commands import main

sys.exit(main())
