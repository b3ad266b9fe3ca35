"""The SMTP receiver: our own ESMTP server protocol (not ``twisted.mail.smtp.ESMTP``).

One job per module: ``replies`` (reply codes), ``address`` (RFC 5321/6531 path parsing),
``session`` (plain facts about a connection), ``policy`` (recipient decisions), ``trace``
(the Received header), ``queueid`` (queue ids), ``protocol`` (parser and state machine) and
``factory`` (settings, connection limits).
"""
