"""plugins.toml: its model, its validation, and the configuration in force."""
