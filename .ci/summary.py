"""Turn trial's closing line into "tests: N passed, N failed, N skipped" for CI's reader.

Under CI=true a skip is a failure: every test need is installed by .ci/run, so a skip there means
an install step is missing (tests/support/tools.py makes such tests fail; this catches the rest).
"""

import os
import re
import sys

text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
match = re.findall(r"^(PASSED|FAILED) \((.*)\)$", text, re.MULTILINE)
if not match:
    print("tests: 0 passed, 1 failed (no trial summary found)")
    sys.exit(0)
counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match[-1][1]))
passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
failed = counts.get("failures", 0) + counts.get("errors", 0) + counts.get("unexpectedSuccesses", 0)
skipped = counts.get("skips", 0)
print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
if skipped and os.environ.get("CI", "").lower() == "true":
    print(f"CI=true: {skipped} skipped tests mean a missing install step in .ci/run", file=sys.stderr)
    sys.exit(1)
