"""CLI commands (not yet implemented)."""


def register(sub) -> None:
    pass
