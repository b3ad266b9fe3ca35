"""Deterministic fault injection for the SMTP receiver (a test and dev-stack tool).

- ``rules``: the rule model (what ``[[faults.rule]]`` and the web API hold) and ``FaultRules``,
  the rules of one running server, which decides what fires;
- ``smtp``: the SMTP protocol and factory with the rules applied at each stage; the receiver in
  ``mailhub.smtp`` knows nothing of faults;
- ``certificates``: forging bad certificates and the TLS wrapper that presents them.
"""
