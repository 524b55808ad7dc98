"""The plain functions behind the entry scripts: each takes the composed config and returns its row."""
