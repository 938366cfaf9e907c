import sys

from clockfleet.cli import main

sys.exit(main())
