"""Pure geometry and preprocessing functions: arrays in, arrays out; no I/O, no config."""
