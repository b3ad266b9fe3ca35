"""Message parsing that every protocol shares (neutral: imports no feature package).

* ``header_text``  header field octets -> text: the one rule (RFC 6532 UTF-8, each
                   ill-formed stretch U+FFFD), for IMAP SEARCH/SORT, the web page and the API
* ``headers``      header field syntax: unfolding, MIME parameters (RFC 2045/2231), address
                   lists (RFC 5322 3.4), RFC 2047 encoded words
* ``structure``    the parse of a message: part tree, offsets, content fields, the raw ENVELOPE
                   fields, the top-level header; what the store's cache keeps per message
* ``mime``         parsing a message file (bounded reads, never refusing) into a ``structure``
"""
