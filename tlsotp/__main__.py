"""``python -m tlsotp``: the ``tlsotp`` command (the dispatcher in ``tlsotp.commands.main``)."""

from tlsotp.commands.main import main

if __name__ == "__main__":
    main()
