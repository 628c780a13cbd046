"""Reading the warehouse: derived-scalar views (derived/*.sql) and the Python query API."""
