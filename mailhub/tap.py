"""twistd glue: ``twistd -n mailhub [--config FILE] [--data DIR]``.

No options: the development stack (loopback only, catch-all, nothing leaves the machine).
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.python import usage

from mailhub.config import ConfigError, dev_config, load


class Options(usage.Options):
    synopsis = "[--config FILE] [--data DIR]"
    longdesc = (
        "Without --config, starts the development stack: SMTP on 127.0.0.1:1025 accepts mail for "
        "any address and keeps it in DIR/mail (default ./mailhub-data). With --config, runs as "
        "configured in the TOML file (see etc/mailhub.toml)."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: development stack)."],
        [
            "data",
            "d",
            None,
            "Data directory (overrides [server] data_dir; default ./mailhub-data)",
        ],
    ]


def makeService(options: Options) -> IService:
    from mailhub.service import build

    try:
        if options["config"]:
            config = load(options["config"], data_dir=options["data"])
        else:
            config = dev_config(options["data"] or "mailhub-data")
    except ConfigError as e:
        # One clear message and a non-zero exit, never a traceback: twistd prints SystemExit.
        raise SystemExit(f"mailhub: configuration error in {e}") from None
    return build(config)
