import sys

from btcxr.cli import main

sys.exit(main())
