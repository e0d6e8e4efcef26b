import sys

from dropkit.cli import main

sys.exit(main())
