"""The `keras-globalpool` command line: `compare` heads, `export` models."""
