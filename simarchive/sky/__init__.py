"""The synthetic Rubin-like survey the embedded archive serves: visits, focal plane, sky, FITS."""
