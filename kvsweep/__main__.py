import sys

from kvsweep.orchestrator.cli import main

sys.exit(main())
