"""The twistd plugin is found, and its options build the right service or stop cleanly."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mailhub import tap
from mailhub.config import DEV_PORTS

REPO = Path(__file__).resolve().parent.parent


class Plugin(SynchronousTestCase):
    def test_plugin_is_discovered(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("mailhub", makers)
        self.assertEqual(makers["mailhub"].options, tap.Options)

    def test_no_init_shadowing_twisted(self) -> None:
        # An __init__.py in twisted/ or twisted/plugins/ would hide Twisted's own package.
        self.assertFalse((REPO / "twisted" / "__init__.py").exists())
        self.assertFalse((REPO / "twisted" / "plugins" / "__init__.py").exists())


class MakeService(SynchronousTestCase):
    def setUp(self) -> None:
        # The service freezes the heap when started: record it instead of freezing the test
        # runner's heap.
        self.frozen: list[bool] = []
        self.patch(tap, "freeze_startup_heap", lambda: self.frozen.append(True))

    def options(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_no_options_is_the_dev_stack(self) -> None:
        data = Path(self.mktemp()).absolute()
        service = tap.makeService(self.options("--data", str(data)))
        self.assertTrue(service.config.dev)
        freeze = service.getServiceNamed("heap-freeze")
        self.assertIs(list(service)[-1], freeze)  # after the listeners and the rest
        self.assertEqual(self.frozen, [])
        freeze.startService()
        self.assertEqual(self.frozen, [True])
        self.assertEqual(service.config.data_dir, data)
        # Every listener of the port plan is served, on loopback only.
        self.assertEqual(
            {s.key: s.description for s in service.namedServices.values() if hasattr(s, "key")},
            {key: f"tcp:{port}:interface=127.0.0.1" for key, port in DEV_PORTS.items()},
        )

    def test_interface_opens_the_dev_stack_to_other_hosts(self) -> None:
        data = Path(self.mktemp()).absolute()
        for interface, written in (("0.0.0.0", "0.0.0.0"), ("::", "\\:\\:")):
            service = tap.makeService(self.options("--data", str(data), "--interface", interface))
            listeners = [s for s in service.namedServices.values() if hasattr(s, "key")]
            self.assertEqual(
                {s.key: s.description for s in listeners},
                {key: f"tcp:{port}:interface={written}" for key, port in DEV_PORTS.items()},
            )
            self.assertTrue(service.config.dev)

    def test_interface_is_checked(self) -> None:
        self.assertRaises(usage.UsageError, self.options, "--interface", "localhost:25")
        # With a config file the listeners are the config's.
        self.assertRaises(usage.UsageError, self.options, "--interface", "::", "--config", "x")

    def test_allowed_hosts_for_the_dev_stack_web_page(self) -> None:
        data = Path(self.mktemp()).absolute()
        options = self.options("--data", str(data), "--allowed-host", "Mail", "--allowed-host=::1")
        service = tap.makeService(options)
        self.assertEqual(service.config.web.allowed_hosts, ("mail", "::1"))
        self.assertRaises(usage.UsageError, self.options, "--allowed-host", "bad name")
        self.assertRaises(usage.UsageError, self.options, "--allowed-host", "m", "--config", "x")

    def test_bad_config_is_a_clean_exit(self) -> None:
        path = Path(self.mktemp())
        path.write_text("[domains]\nlocal = 5\n")
        err = self.assertRaises(SystemExit, tap.makeService, self.options("--config", str(path)))
        self.assertIn(f"{path}: [domains] local", str(err.code))
        self.assertIn("must be a list of strings", str(err.code))


class StartupHeap(SynchronousTestCase):
    def test_freeze_moves_the_heap_out_of_the_collectors_reach(self) -> None:
        import gc

        self.addCleanup(gc.unfreeze)
        before = gc.get_freeze_count()
        tap.freeze_startup_heap()
        self.assertGreater(gc.get_freeze_count(), before)
