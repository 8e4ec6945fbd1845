"""Client roles: one module per role; each handles the ClientApp's messages."""
