"""Getting files from the network: resumable, verified downloads (http.py), safe extraction
of archives (archives.py), datasets (datasets.py) and pretrained weights (weights.py)."""
