"""The warehouse tables and who writes them: raw loader, registry, runs, watermarks, tokens, migrations."""
