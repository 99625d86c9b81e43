"""Prefect flows: wiring only. The work lives in tasks/, paths and caching in storage/."""
