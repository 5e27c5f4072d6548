"""Built-in policy plugins; each module uses only the public plugin API a third party could use."""
