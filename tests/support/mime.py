"""Sample messages and message strategies shared by the MIME, SEARCH and SORT tests."""

from __future__ import annotations

import base64
import io
import sysconfig
from pathlib import Path

from hypothesis import strategies as st


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


PDF = base64.encodebytes(b"%PDF-1.4 fake" * 20)


ALTERNATIVE_WITH_ATTACHMENTS = (
    crlf(b"""From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>
To: Alice <alice@example.com>, "Bob, Jr." <bob@example.com>
Cc: undisclosed-recipients:;
Subject: =?iso-8859-1?q?Gr=FC=DFe?= aus =?utf-8?b?TcO8bmNoZW4=?=
Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
Message-ID: <B27397-0100000@example.de>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PGI+R3LDvMOfZTwvYj4=
--inner--

--outer
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"; size=12
Content-Transfer-Encoding: base64
Content-Description: The report

""")
    + crlf(PDF)
    + crlf(b"""--outer
Content-Type: image/png
Content-ID: <img1@example.de>
Content-Disposition: inline

iVBORw0KGgo=
--outer--
epilogue
""")
)


NESTED = crlf(b"""From: list@example.org
To: a@example.com
Subject: Fwd: nested
Content-Type: multipart/mixed; boundary="X"

--X
Content-Type: text/plain

See attached.
--X
Content-Type: message/rfc822

From: Inner <inner@example.net>
Subject: inner message
Date: Tue, 1 Jul 2003 10:52:37 +0200
Content-Type: multipart/alternative; boundary="Y"

--Y
Content-Type: text/plain

inner text
--Y
Content-Type: message/rfc822; name=deeper.eml

Subject: deeper
From: Deep <d@e.f>

deep body
line two
--Y--
--X--
""")


ADDRESSES = crlf(b"""From: "Last, First" <first.last@example.com> (comment)
Sender: <@route1,@route2:user@example.com>
Reply-To: =?utf-8?q?Caf=C3=A9?= <cafe@example.com>
To: Group One: a@x.y, "B B" <b@x.y>;, plain@example.org, <angle@example.org>
Cc: "quoted\\"name" <q@x>, John Q. Public <jqp@example.com>
Bcc: "odd local"@example.com, broken@, @nolocal.com, trailing,
In-Reply-To:   <prev@example.com>{trailing}
Message-ID: <id@example.com> (c)
Subject:
Date:

b
""").replace(b"{trailing}", b"  ")


_lines = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=a\r\n",
        b"Content-Type: multipart/alternative; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: multipart/digest; boundary=a\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Subject: =?utf-8?q?x?=\r\n",
        b"From: a@b, (c) <d@e>, g: h@i;\r\n",
        b" folded\r\n",
        b"--a\r\n",
        b"--a--\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"\r\n",
        b"\n",
        b"text line\r\n",
        b"bare lf\n",
        b"\xff\xfe 8bit\r\n",
        b"no line end",
        b"\r",
    ]
)


_messages = st.lists(_lines, max_size=40).map(b"".join) | st.binary(max_size=300)


PYTHON_EMAIL_DATA = Path(sysconfig.get_path("stdlib")) / "test" / "test_email" / "data"


SIMPLE = b"Subject: hi\r\nFrom: a@b.c\r\n\r\nhello"

# a multipart with a preamble, an epilogue and a message/rfc822 part
MULTIPART = crlf(b"""Content-Type: multipart/mixed; boundary="b"
Subject: x

pre
--b
Content-Type: text/plain

hello
--b

line1
line2

--b
Content-Type: message/rfc822

Subject: inner
To: bare

in body
--b--
epi
""")


def corpus() -> list[bytes]:
    """The sample messages and Python's email test messages (as sent, and in CRLF)."""
    out = [ALTERNATIVE_WITH_ATTACHMENTS, NESTED, ADDRESSES, SIMPLE, MULTIPART]
    if PYTHON_EMAIL_DATA.is_dir():
        for path in sorted(PYTHON_EMAIL_DATA.glob("msg_*.txt")):
            data = path.read_bytes()
            out += [data, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")]
    return out


class CountingReader(io.BytesIO):
    """Records the largest amount any single read asked for (or got)."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.largest = max(self.largest, len(data))
        return data

    def readline(self, n: int | None = -1) -> bytes:
        data = super().readline(n)
        self.largest = max(self.largest, len(data))
        return data
