"""The `progan` command-line app: one small module per command, each parsing options and calling the core."""
