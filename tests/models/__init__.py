"""Register-level Python models of the devices the scenario drivers drive (tests only)."""
