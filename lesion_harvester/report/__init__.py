"""Reports: tables, plots and image montages."""
