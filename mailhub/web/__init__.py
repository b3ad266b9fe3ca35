"""The web page and JSON API (issue 7): what a person and a test see of the caught mail.

Modules, one job each:

* ``ids``       message ids: mailbox + folder + Maildir base name, URL-safe and stable
* ``parse``     a stored message -> summary and detail (``email`` with policy=default), the
                envelope and TLS/AUTH facts read back from our own trace headers
* ``sanitise``  HTML bodies made safe to show (nh3/ammonia), remote content counted
* ``search``    the search syntax (from:, to:, subject:, has:attachment, before:, ...)
* ``feed``      the change feed: every message gets an arrival sequence number; cursors, waiters
                and live events all come from it
* ``release``   relay a caught message to an SMTP server through the relay code
* ``access``    HTTP Basic login against the shared portal
* ``api``       the /api/v1 resources; ``openapi`` their description
* ``site``      the twisted.web Site: page, static files, API, security headers
"""
