"""Raw datasets: the folder contract, checks, conversion from MSD, and the built-in demo data."""
