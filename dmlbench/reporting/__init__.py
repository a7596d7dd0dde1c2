"""From finished runs to the report: tables, statistics, figures, the published numbers, the
README's generated blocks, and building and browser-checking the report."""
