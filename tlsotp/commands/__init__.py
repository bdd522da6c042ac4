"""The ``tlsotp`` subcommands and the twistd plugins' service makers: argv in, settings out."""
