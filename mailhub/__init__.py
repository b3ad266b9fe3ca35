"""mailhub: a Twisted mail server over one Maildir store."""

__version__ = "0.1.0"
