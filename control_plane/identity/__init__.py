"""Who is calling: credential verification (API keys now, OIDC later) and service identities."""
