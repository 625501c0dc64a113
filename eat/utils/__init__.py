"""Small helpers shared by the command-line tools (benchmark timing and machine description)."""
