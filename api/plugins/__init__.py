"""Provider plugins: hookspecs, discovery through entry points, plugins.toml."""

from api.plugins.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
