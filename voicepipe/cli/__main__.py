from __future__ import annotations

import sys

from voicepipe.cli import main

sys.exit(main())
