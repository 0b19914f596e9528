"""The approved library as the database searches it: full-text (and optionally vector) ranking
of approved examples, so a draft reads only the few examples it uses."""
