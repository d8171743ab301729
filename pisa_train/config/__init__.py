"""The config a command hands to MMEngine: loading it (loading.py), pure rewrites (rewrites.py,
dataset_folder.py), pisa-train's own keys (settings.py), and one builder per command that
decides their order (build.py)."""
