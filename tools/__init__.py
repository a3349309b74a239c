"""Command-line tools: README table generation, receptive-field study."""
