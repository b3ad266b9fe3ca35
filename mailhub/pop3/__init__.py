"""POP3 server over the Maildir store (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).

- ``protocol``: the session (parser, states, replies); no file-system code.
- ``maildrop``: one session's snapshot of a mailbox: message numbers, deletion marks, UPDATE.
- ``sender``: RETR/TOP output streamed from disk with dot-stuffing and flow control.
- ``lock``: one POP3 session per mailbox, across processes.
- ``factory``: the listener's settings and connection counts.
"""
