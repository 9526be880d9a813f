import sys

from checker.run import main

sys.exit(main())
