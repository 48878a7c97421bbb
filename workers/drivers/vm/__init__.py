"""VM driver for Berth: libvirt domains (see README.md)."""
