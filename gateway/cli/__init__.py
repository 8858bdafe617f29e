"""The `lrs-gateway` command and its subcommands."""
