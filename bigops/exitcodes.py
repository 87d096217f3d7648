"""Exit codes of the ``bigops`` command, documented once."""

OK = 0
FAILURE = 1  # a known failure not covered below
USAGE = 2  # bad configuration or command line (also Typer's own usage errors)
CHECKPOINT = 3  # a checkpoint is missing, partial or unreadable
OUTPUT_EXISTS = 4  # the destination exists; nothing was overwritten
INTERRUPTED = 130  # Ctrl-C
WATCHDOG_GAVE_UP = 20  # `bigops launch --watch`: restart budget exhausted or no progress; on call was paged
