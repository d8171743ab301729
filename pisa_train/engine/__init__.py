"""pisa-train's engine: builds MMEngine's Runner from a finished config and runs it; its hooks and its patches of upstream behaviour."""
