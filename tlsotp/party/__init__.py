"""The server and client daemons: thin Twisted shells around the sans-I/O core."""
