"""HTML sanitising for the message view (mailhub.web.sanitise)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mailhub.web.sanitise import content_security_policy, count_remote, document, sanitise


class Sanitise(SynchronousTestCase):
    def test_scripts_are_removed_with_their_content(self) -> None:
        out = sanitise("<p>hi</p><script>alert('x')</script><SCRIPT src=//e/x.js></SCRIPT>")
        self.assertEqual(out, "<p>hi</p>")

    def test_event_handlers_are_removed(self) -> None:
        out = sanitise('<p onclick="x()" onmouseover=y>a</p><img src=a.png onerror="z()">')
        self.assertEqual(out, '<p>a</p><img src="a.png">')

    def test_javascript_and_data_links_are_removed(self) -> None:
        out = sanitise(
            '<a href="javascript:alert(1)">a</a><a href=" JaVaScRiPt:alert(1)">b</a>'
            '<a href="data:text/html,<script>x</script>">c</a><a href="https://ok.example/">d</a>'
        )
        self.assertNotIn("javascript", out.lower())
        self.assertNotIn("data:", out)
        self.assertIn('href="https://ok.example/"', out)
        self.assertIn('target="_blank"', out)
        self.assertIn('rel="noopener noreferrer"', out)

    def test_forms_frames_and_objects_are_removed(self) -> None:
        out = sanitise(
            '<form action="https://phish.example"><input name=p></form>'
            '<iframe src="https://e/"></iframe><object data=x></object><embed src=y>ok'
        )
        self.assertEqual(out, "ok")

    def test_styles_stay_remote_references_are_counted(self) -> None:
        html = (
            "<style>p{color:red}</style>"
            '<p style="background:url(https://t.example/bg.png)">x</p>'
            '<img src="http://t.example/pixel.gif"><img src="//t.example/p2.gif">'
            '<table background="https://t.example/t.png"><tr><td>y</td></tr></table>'
        )
        out = sanitise(html)
        self.assertIn("<style>p{color:red}</style>", out)
        self.assertEqual(count_remote(out), 4)
        self.assertEqual(count_remote(sanitise('<img src="data:image/png;base64,AA==">')), 0)

    def test_class_and_id_stay_for_the_messages_own_style(self) -> None:
        out = sanitise('<style>.x{color:red}</style><p class="x" id="y" onclick="a()">hi</p>')
        self.assertIn('class="x"', out)
        self.assertIn('id="y"', out)
        self.assertNotIn("onclick", out)

    def test_cid_images_become_data_urls_of_the_message_parts(self) -> None:
        parts = {"logo@shop": "data:image/png;base64,iVBORw0KGgo="}
        out = sanitise('<img src="cid:logo@shop"><img src="cid:missing">', parts.get)
        self.assertEqual(out, '<img src="data:image/png;base64,iVBORw0KGgo="><img>')

    def test_only_image_data_urls_are_kept(self) -> None:
        out = sanitise('<img src="data:text/html;base64,PHNjcmlwdD4=">')
        self.assertEqual(out, "<img>")

    def test_policy_blocks_script_and_remote_content_until_asked(self) -> None:
        strict = content_security_policy(remote=False)
        self.assertIn("default-src 'none'", strict)
        self.assertIn("img-src data:;", strict)
        self.assertNotIn("script-src", strict)  # default-src 'none' covers it
        self.assertIn("sandbox allow-popups", strict)
        self.assertIn("img-src data: http: https:", content_security_policy(remote=True))
        self.assertIn(strict, document("<p>x</p>", remote=False))
