"""The Kling client: transport with one retry engine, tokens, errors, task models, limits,
downloads and webhooks."""
