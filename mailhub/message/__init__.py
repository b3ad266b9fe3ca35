"""Message parsing that every protocol shares (neutral: imports no feature package).

* ``header_text``  header field octets -> text: the one rule (RFC 6532 UTF-8, each
                   ill-formed stretch U+FFFD), for IMAP SEARCH/SORT, the web page and the API
"""
