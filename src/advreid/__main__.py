import sys

from advreid.cli import main

sys.exit(main())
