"""Built-in plugins. Each module registers its components through the same hooks a
third-party plugin uses (see ``reason.hookspecs``); nothing here is special-cased."""
