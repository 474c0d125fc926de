"""`adamix train` / `adamix eval`: train AdaMix mixtures on labelled data and export merged adapters."""
