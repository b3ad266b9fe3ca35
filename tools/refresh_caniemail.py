"""Refresh mailhub/web/data/caniemail.json from the ``caniemail`` npm package (not run by tests).

    python tools/refresh_caniemail.py                  # npm pack caniemail (the latest)
    python tools/refresh_caniemail.py caniemail-2.0.2.tgz

Keeps the features mailhub.web.compat detects, each client's latest test result (the last
version caniemail lists for it) and the notes those results cite; writes the package's LICENSE
(MIT) beside the data together with the notice of caniemail.com's own repository, whose data
the package carries.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mailhub.web.compat import known_slugs

HERE = Path(__file__).resolve().parent.parent / "mailhub" / "web" / "data"
SITE_NOTICE = """
The data comes from caniemail.com (https://www.caniemail.com/,
https://github.com/hteumeuleu/caniemail), published under the MIT Licence:

    MIT License

    Copyright (c) 2019 HTeuMeuLeu

    Permission is hereby granted, free of charge, to any person obtaining a copy of this
    software and associated documentation files (the "Software"), to deal in the Software
    without restriction, including without limitation the rights to use, copy, modify,
    merge, publish, distribute, sublicense, and/or sell copies of the Software, and to
    permit persons to whom the Software is furnished to do so, subject to the following
    conditions:

    The above copyright notice and this permission notice shall be included in all copies
    or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
    INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
    PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
    HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
    CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR
    THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def tarball(argv: list[str]) -> bytes:
    if argv:
        return Path(argv[0]).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        name = subprocess.run(
            ["npm", "pack", "caniemail"], cwd=tmp, check=True, capture_output=True, text=True
        ).stdout.split()[-1]
        return (Path(tmp) / name).read_bytes()


def trim(raw: dict, version: str) -> dict:
    nice = raw["nicenames"]
    clients: dict[str, str] = {}
    features = {}
    wanted = known_slugs()
    for feature in raw["data"]:
        if feature["slug"] not in wanted:
            continue
        support = {}
        for family, platforms in feature["stats"].items():
            for platform, results in platforms.items():
                if not results:
                    continue
                client = f"{family}.{platform}"
                clients[client] = (
                    f"{nice['family'].get(family, family)} "
                    f"{nice['platform'].get(platform, platform)}"
                )
                support[client] = list(results.values())[-1]  # the latest test listed
        cited = {n for v in support.values() for n in v.replace("#", " ").split()[1:]}
        features[feature["slug"]] = {
            "title": feature["title"],
            "url": feature["url"],
            "category": feature["category"],
            "support": support,
            "notes": {k: v for k, v in (feature["notes_by_num"] or {}).items() if k in cited},
        }
    order = sorted(clients)
    for feature in features.values():
        # One list in the order of "clients" ("u": not tested), not a map per feature: a
        # fifth of the size.
        feature["support"] = [feature["support"].get(c, "u") for c in order]
    return {
        "source": f"caniemail {version} (npm), data of caniemail.com",
        "updated": raw["last_update_date"],
        "clients": {c: clients[c] for c in order},
        "features": dict(sorted(features.items())),
    }


def main(argv: list[str]) -> None:
    with tarfile.open(fileobj=io.BytesIO(tarball(argv))) as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(f"package/{name}")
            assert member is not None, name
            return member.read()

        package = json.loads(read("package.json"))
        raw = json.loads(read("data/caniemail.json"))
        licence = read("LICENSE").decode("utf-8")
    trimmed = trim(raw, package["version"])
    (HERE / "caniemail.json").write_text(
        json.dumps(trimmed, ensure_ascii=False, separators=(",", ":"), sort_keys=False) + "\n",
        encoding="utf-8",
    )
    (HERE / "caniemail.LICENSE").write_text(
        f"caniemail {package['version']} (npm package, {package.get('repository', '')}):\n\n"
        f"{licence.strip()}\n\n{SITE_NOTICE.strip()}\n",
        encoding="utf-8",
    )
    print(f"{len(trimmed['features'])} features, {len(trimmed['clients'])} clients")


if __name__ == "__main__":
    main(sys.argv[1:])
