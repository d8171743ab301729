"""The console commands. Each module has ``build_parser()`` and ``main(argv) -> int``
and imports nothing heavy until it runs, so ``--help`` answers at once."""
