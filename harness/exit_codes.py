"""What a ``harness`` command's exit status means, for every subcommand (its ``--help`` epilog says it too)."""

EXIT_FAILED = 1  # a case failed or errored, or an output could not be written
EXIT_USAGE = 2  # bad input, found before any worker started (one line per problem)
EXIT_NO_GPU = 3  # --platform gpu on a machine without a GPU
