"""Data sets (embedded, generated, or read from standard files) and client partitions."""
