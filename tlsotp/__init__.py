"""tlsotp: a customized TLS on Twisted that delivers a one-time password."""

__version__ = "0.1.0"
