"""Reports: records into tables and plots, beside the published numbers."""
