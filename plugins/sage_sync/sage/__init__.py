"""The Sage contract: HTTP client, OAuth, the stream registry, token types, money parsing. Knows no warehouse."""
