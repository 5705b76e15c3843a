"""The model artifact format and its reported view."""
