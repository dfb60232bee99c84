import sys

from flyt.cli.main import main

sys.exit(main())
