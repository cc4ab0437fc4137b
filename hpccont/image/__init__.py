"""What an image is: SIF files, plain squashfs files, sandbox directories, and how they are built."""
