"""Mail authentication (issue 14): SPF, DKIM, DMARC and ARC, signing and judging.

- ``dns``: the asynchronous DNS lookups every check makes (``CheckResolver``), with TTL cache,
  timeouts and a per-message budget;
- ``resolver``: ``CheckResolver`` over twisted.names (``TwistedResolver``), the TTL cache
  (``CachingResolver``), ``budgeted()`` and ``make_resolver(config, reactor)``;
- ``keys``: DKIM signing keys on disk (``mailhub dkim keygen``) and ``KeyStore``;
- ``signing``: DKIM signatures (dkimpy) and ``SigningSink``, which signs authenticated mail;
- ``published``: whether a key's TXT record is in DNS and is that key (``check-config --dns``);
- ``results``: what a check found (``MethodResult``) and the ``Authentication-Results`` header
  (RFC 8601) that carries it, written and read back (the web page reads it from the message);
- ``explain``: those results in a developer's words, for the dev stack's page and API.

The checks know nothing of SMTP: the receiver's sink decorators call them.
"""
