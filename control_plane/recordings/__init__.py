"""Session recordings: reading the files the data plane writes, listing them, replaying them."""
