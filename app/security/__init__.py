"""Who may call the service: API keys with scopes, per-key rate limits, and an audit trail."""
