"""The command line: argument parsing, console views and report files; the only part that prints."""
