"""The admin pages (staff only), split by what they manage."""
