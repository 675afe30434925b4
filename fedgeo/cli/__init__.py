"""The ``fedgeo`` console command."""
