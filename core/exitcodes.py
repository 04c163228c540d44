"""The one table of process exit codes (``python -m core ...`` and the training job process).

Documented in README.md: 0 ok, 2 usage, 3 data/input problem, 4 some inputs rejected,
5 no model / registry problem, 6 another training job (or PACS watcher) is running, 7 the PACS
cannot be reached or refused a request, 8 the shared database cannot be reached or refused a
write, 130 cancelled; 1 is an unexpected error.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_PARTIAL = 4
EXIT_MODEL = 5
EXIT_BUSY = 6
EXIT_PACS = 7
EXIT_DATABASE = 8
EXIT_CANCELLED = 130
