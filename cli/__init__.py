"""The ``se3pyg`` command line (installed as ``se3pyg.cli``)."""
