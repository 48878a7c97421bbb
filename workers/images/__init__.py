"""Image builders for containers: a tree per image, ``<image_dir>/<name>/rootfs/`` + image.json."""
