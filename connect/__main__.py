import sys

from connect.cli import main

sys.exit(main())
