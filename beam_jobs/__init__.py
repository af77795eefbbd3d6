"""Apache Beam job entry points: options, read, the library transform, write."""
