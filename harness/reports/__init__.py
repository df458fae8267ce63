"""Where results go after a run: the run history (SQLite) and CI formats (JUnit XML)."""
