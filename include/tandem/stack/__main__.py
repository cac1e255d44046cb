import sys

from tandem.stack.cli import main

sys.exit(main())
