"""One module per ``harness`` subcommand beyond list and run: its parser and its main."""
