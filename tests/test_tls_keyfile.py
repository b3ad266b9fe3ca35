"""A private key file that is PEM but cannot be parsed gets a clear TLSFileError.

(Found by the type checker: the except clause named ``serialization.UnsupportedAlgorithm``,
which cryptography does not have, so a malformed key raised AttributeError instead.)
The lead may fold this into test_tls.FileErrorTests once the tests/ restructuring is merged.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mailhub.tls import ServerTLS, TLSFileError
from tests.support.tls import CertificateAuthority

CA = CertificateAuthority()


class MalformedKeyTests(SynchronousTestCase):
    def test_malformed_pem_key(self) -> None:
        directory = Path(self.mktemp()).absolute()
        cert_path, _ = CA.issue(["mail.example.com"]).write(directory, "mail")
        broken = directory / "broken.pem"
        broken.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        e = self.assertRaises(TLSFileError, ServerTLS, [(cert_path, broken)])
        self.assertEqual((e.path, e.role), (broken, "key"))
        self.assertIn("the private key cannot be parsed", e.problem)
        self.assertEqual(e.fix, "give a PEM private key")
