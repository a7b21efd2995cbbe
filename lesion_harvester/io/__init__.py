"""Readers and writers: the only code in the package that opens files."""
