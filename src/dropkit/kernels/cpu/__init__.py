"""Compiled CPU kernel (not built yet: the reference backend serves CPU tensors)."""


def available() -> bool:
    return False


def status() -> tuple[str, str]:
    return "reference", "the compiled CPU kernel is not part of this build"
