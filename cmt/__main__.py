import sys

from cmt.cli import main

sys.exit(main())
