"""Storage owns every path, the artifact store, the DuckDB catalog and the cache policy."""
