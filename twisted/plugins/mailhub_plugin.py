"""twistd plugin: ``twistd -n mailhub``. No __init__.py beside this file (it would shadow Twisted's)."""

from twisted.application.service import ServiceMaker

mailhub = ServiceMaker("mailhub", "mailhub.tap", "mailhub: SMTP, IMAP and POP3 over Maildir", "mailhub")
