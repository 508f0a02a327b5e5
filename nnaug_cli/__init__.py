"""nnaug's command-line tool: thin click commands over the ``nnaug`` library."""
