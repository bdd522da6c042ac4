"""twistd finds tlsotp's three plugins, and the TTP's is wired to its Options and makeService."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from tlsotp.commands import ttp_daemon as daemon


class PluginTests(unittest.SynchronousTestCase):
    def test_plugins_are_found(self) -> None:
        tapnames = {maker.tapname for maker in getPlugins(IServiceMaker)}
        self.assertTrue({"tlsotp-ttp", "tlsotp-server", "tlsotp-client"} <= tapnames, sorted(tapnames))

    def test_ttp_plugin_loads_its_module_lazily(self) -> None:
        (maker,) = [m for m in getPlugins(IServiceMaker) if m.tapname == "tlsotp-ttp"]
        self.assertIs(maker.options, daemon.Options)
        self.assertIs(maker.makeService, daemon.makeService)
