"""POP3 server (RFC 1939, 2449, 2595, 5034) over the Maildir store."""
