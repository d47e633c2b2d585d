"""Exit codes every command shares; each command's docs page lists its own on top of these.
A neutral module, so cores (importing/, mv/) and controls (cli/) name them from one place."""

EXIT_USAGE = 2          # bad arguments (argparse uses 2 as well)
EXIT_SERVER = 20        # the server could not be reached or refused the session
EXIT_PERMISSION = 21    # the current user lacks a privilege or right the command needs
EXIT_NOT_FOUND = 22     # objects unknown or not readable by the current user
