"""The process tier: tests that run twistd, tlsotp or openssl as subprocesses (``python -m twisted.trial tests.process``)."""
