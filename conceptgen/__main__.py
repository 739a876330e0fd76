import sys

from conceptgen.cli import main

sys.exit(main())
