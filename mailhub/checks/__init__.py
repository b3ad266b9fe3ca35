"""Mail authentication (issue 14): SPF, DKIM, DMARC and ARC, signing and judging.

- ``dns``: the asynchronous DNS lookups every check makes (``CheckResolver``), with TTL cache,
  timeouts and a per-message budget;
- ``resolver``: ``CheckResolver`` over twisted.names (``TwistedResolver``), the TTL cache
  (``CachingResolver``), ``budgeted()`` and ``make_resolver(config, reactor)``;
- ``results``: what a check found (``MethodResult``) and the ``Authentication-Results`` header
  (RFC 8601) that carries it, written and read back (the web page reads it from the message).

The checks know nothing of SMTP: the receiver's sink decorators call them.
"""
