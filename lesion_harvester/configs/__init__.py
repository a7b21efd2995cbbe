"""Built-in YAML presets: tiny (tests), demo (quick CPU), bench (CPU accuracy), paper (GPU)."""
