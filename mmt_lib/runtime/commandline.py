"""How the command lines refuse: one line that names the argument, says what was expected and what to do.

argparse prints its usage block for a mistyped option or ``-h``; a refusal of a well-formed command is one
line on stderr and exit status 2, and nothing has been written by then.
"""

from __future__ import annotations

import sys

EXIT_REFUSED = 2
"""Exit status of a refused command, as argparse uses for a mistyped one."""


class Refusal(ValueError):
    """A command's input refused before anything ran: the message is the one line the user reads."""


def refuse(prog: str, reason: object) -> int:
    """Print ``prog: reason`` as one line on stderr; returns the exit status to end with."""
    message = " ".join(str(reason).split())
    print(f"{prog}: {message}", file=sys.stderr)
    return EXIT_REFUSED
