import sys

from vfio_scenario.cli import main

sys.exit(main())
