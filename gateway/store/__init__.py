"""Where the control plane keeps its records: credentials and their audit (SQLite by default)."""
