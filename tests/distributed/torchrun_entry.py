"""Run by the tests under torchrun: the ``lesion-harvester`` CLI, where the rank named by
``TEST_DIE_RANK`` dies (``os._exit``, as a killed process) right after saving its first scanned volume."""

import os
import sys

from lesion_harvester.cli.main import main
from lesion_harvester.io import partial

if os.environ.get("TEST_DIE_RANK") == os.environ.get("RANK"):
    save = partial.PartialResults.save

    def save_then_die(self, key, tracklets):
        save(self, key, tracklets)
        os._exit(1)

    partial.PartialResults.save = save_then_die

sys.exit(main())
