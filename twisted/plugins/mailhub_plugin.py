"""twistd plugin: ``twistd -n mailhub``.

No __init__.py beside this file or in twisted/: it would shadow Twisted's own package.
"""

from twisted.application.service import ServiceMaker

mailhub = ServiceMaker(
    "mailhub", "mailhub.tap", "mailhub: SMTP, IMAP and POP3 over Maildir", "mailhub"
)
