"""``python -m fedgeo`` runs the ``fedgeo`` command."""

import sys

from fedgeo.cli.main import main

sys.exit(main())
